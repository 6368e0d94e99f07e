/* dp_main.c - shoal-dp: the Renyi-DP accountant of privacy/rdp.h on the
 * command line, to plan a DP run (how much noise for a budget) or to check
 * what the server's accountant reports. One JSON object on stdout; errors
 * on stderr. */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "privacy/rdp.h"

#define PROG "shoal-dp"
#define MAX_STEPS 1000000000000000ull /* 1e15, exact as a double */

enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: " PROG " rdp       --q Q --sigma Z --steps T --order A\n"
	        "       " PROG " epsilon   --q Q --sigma Z --steps T --delta D [--orders LIST]\n"
	        "       " PROG " calibrate --q Q --steps T --delta D --epsilon E [--orders LIST]\n"
	        "       " PROG " ddg       --q Q --steps T --delta D --dim N --clients K --l2 L\n"
	        "                 --sigma2 S [--l1 L1] [--accounting bound|gaussian]\n"
	        "\n"
	        "Renyi-DP accounting for T steps of the Poisson-subsampled Gaussian\n"
	        "mechanism: each client joins a round independently with probability Q,\n"
	        "and the sum of updates clipped to L2 norm C gets N(0, (Z C)^2) noise.\n"
	        "This is the accountant shoal-server uses. Prints one JSON object.\n"
	        "\n"
	        "commands:\n"
	        "  rdp        RDP of the T steps at order A\n"
	        "             -> {\"q\", \"sigma\", \"steps\", \"order\", \"rdp\"}\n"
	        "  epsilon    epsilon at delta D after T steps, minimised over the orders\n"
	        "             -> {\"epsilon\", \"order\" (the best), \"delta\", \"q\", \"sigma\",\n"
	        "                 \"steps\", \"orders\" (how many)}\n"
	        "  calibrate  the smallest Z (to 1e-6) whose epsilon after T steps is <= E\n"
	        "             -> {\"sigma\", \"epsilon\" (at that sigma), \"order\", \"target_epsilon\",\n"
	        "                 \"delta\", \"q\", \"steps\", \"orders\"}\n"
	        "  ddg        epsilon of T rounds of distributed DP (shoal-server --dp\n"
	        "             distributed): K clients each add discrete Gaussian noise of\n"
	        "             variance S to N integer coordinates, one client's integer vector\n"
	        "             has L2 norm <= L (and L1 <= L1, default min(sqrt(N) L, L^2));\n"
	        "             Kairouz et al. 2021 (Prop. 14) with Zhu and Wang's general\n"
	        "             subsampling bound, or with --accounting gaussian the binomial\n"
	        "             (subsampled-Gaussian) bound, at orders 2..128 and 256. The\n"
	        "             server logs the values to pass.\n"
	        "             -> {\"epsilon\", \"order\", \"z\" (sqrt(K S) / L), \"tau\",\n"
	        "                 \"epsilon_no_sampling\" (q = 1), and the inputs}\n"
	        "\n"
	        "options:\n"
	        "  --q Q          sampling rate in [0, 1] (expected clients per round / population)\n"
	        "  --sigma Z      noise multiplier (noise stddev / clipping norm), > 0\n"
	        "  --steps T      number of steps (rounds), an integer >= 0\n"
	        "  --order A      RDP order > 1, at most %g, or inf\n"
	        "  --delta D      delta in (0, 1), e.g. below 1 / population\n"
	        "  --epsilon E    target epsilon, > 0\n"
	        "  --orders LIST  comma-separated orders (default: Opacus' %d orders\n"
	        "                 1.1, 1.2, ..., 10.9, 12, 13, ..., 63)\n"
	        "  -h, --help     this text\n"
	        "\n"
	        "Numbers print with enough digits to read back exactly; an infinite value\n"
	        "prints as null (JSON has no infinity). Exit status: 0 done, 1 no answer\n"
	        "(calibrate cannot meet the target), 2 usage error.\n",
	        DP_ORDER_MAX, DP_DEFAULT_ORDERS);
}

/* The shortest %g form that reads back as v; null if v is not finite. */
static void
put_num(const char *key, double v, bool last)
{
	char buf[40];

	if (!isfinite(v)) {
		snprintf(buf, sizeof buf, "null");
	} else {
		for (int p = 1; p <= 17; p++) {
			snprintf(buf, sizeof buf, "%.*g", p, v);
			if (strtod(buf, NULL) == v)
				break;
		}
	}
	printf("\"%s\":%s%s", key, buf, last ? "}\n" : ",");
}

static void
put_u64(const char *key, uint64_t v, bool last)
{
	printf("\"%s\":%" PRIu64 "%s", key, v, last ? "}\n" : ",");
}

/* An order: a number > 1 and <= DP_ORDER_MAX, or "inf". */
static bool
parse_order(const char *s, double *out)
{
	if (strcmp(s, "inf") == 0 || strcmp(s, "Inf") == 0 || strcmp(s, "INF") == 0) {
		*out = INFINITY;
		return true;
	}
	return cli_parse_number(s, 1.0, DP_ORDER_MAX, false, out) && *out > 1.0;
}

/* Comma-separated orders into out[DP_MAX_ORDERS]; 0 on a bad list. */
static size_t
parse_orders(const char *s, double *out)
{
	size_t n = 0;
	char tok[64];

	while (*s != '\0') {
		size_t len = strcspn(s, ",");

		if (len == 0 || len >= sizeof tok || n == DP_MAX_ORDERS)
			return 0;
		memcpy(tok, s, len);
		tok[len] = '\0';
		if (!parse_order(tok, &out[n++]))
			return 0;
		s += len;
		if (*s == ',' && *++s == '\0')
			return 0;
	}
	return n;
}

enum {
	O_Q = 1, O_SIGMA, O_STEPS, O_ORDER, O_DELTA, O_EPSILON, O_ORDERS, O_DIM, O_CLIENTS, O_L2,
	O_L1, O_SIGMA2, O_ACCOUNTING, O_COUNT
};

static const char *const opt_name[O_COUNT] = {
	[O_Q] = "--q",         [O_SIGMA] = "--sigma",     [O_STEPS] = "--steps",
	[O_ORDER] = "--order", [O_DELTA] = "--delta",     [O_EPSILON] = "--epsilon",
	[O_ORDERS] = "--orders", [O_DIM] = "--dim",       [O_CLIENTS] = "--clients",
	[O_L2] = "--l2",       [O_L1] = "--l1",           [O_SIGMA2] = "--sigma2",
	[O_ACCOUNTING] = "--accounting",
};
/* Options a command may leave out. */
#define OPTIONAL_OPTS (1u << O_ORDERS | 1u << O_L1 | 1u << O_ACCOUNTING)

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{"q", required_argument, NULL, O_Q},
		{"sigma", required_argument, NULL, O_SIGMA},
		{"steps", required_argument, NULL, O_STEPS},
		{"order", required_argument, NULL, O_ORDER},
		{"delta", required_argument, NULL, O_DELTA},
		{"epsilon", required_argument, NULL, O_EPSILON},
		{"orders", required_argument, NULL, O_ORDERS},
		{"dim", required_argument, NULL, O_DIM},
		{"clients", required_argument, NULL, O_CLIENTS},
		{"l2", required_argument, NULL, O_L2},
		{"l1", required_argument, NULL, O_L1},
		{"sigma2", required_argument, NULL, O_SIGMA2},
		{"accounting", required_argument, NULL, O_ACCOUNTING},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	/* Which options each command takes (bit per option) and needs. */
	enum { RDP, EPSILON, CALIBRATE, DDG } cmd;
	static const unsigned takes[] = {
		[RDP] = 1u << O_Q | 1u << O_SIGMA | 1u << O_STEPS | 1u << O_ORDER,
		[EPSILON] = 1u << O_Q | 1u << O_SIGMA | 1u << O_STEPS | 1u << O_DELTA | 1u << O_ORDERS,
		[CALIBRATE] = 1u << O_Q | 1u << O_STEPS | 1u << O_DELTA | 1u << O_EPSILON |
		              1u << O_ORDERS,
		[DDG] = 1u << O_Q | 1u << O_STEPS | 1u << O_DELTA | 1u << O_DIM | 1u << O_CLIENTS |
		        1u << O_L2 | 1u << O_L1 | 1u << O_SIGMA2 | 1u << O_ACCOUNTING,
	};
	static const char *const cmd_name[] = {"rdp", "epsilon", "calibrate", "ddg"};
	dp_ddg ddg = {.l1 = -1, .sub = DP_DDG_SUB_GENERAL};
	uint64_t u;
	static double orders[DP_MAX_ORDERS];
	double q = 0, sigma = 0, order = 0, delta = 0, target = 0, eps, best, r;
	uint64_t steps = 0;
	size_t n = 0;
	unsigned seen = 0;
	int c;

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		usage(stdout);
		return EXIT_OK;
	}
	if (strcmp(argv[1], "rdp") == 0)
		cmd = RDP;
	else if (strcmp(argv[1], "epsilon") == 0)
		cmd = EPSILON;
	else if (strcmp(argv[1], "calibrate") == 0)
		cmd = CALIBRATE;
	else if (strcmp(argv[1], "ddg") == 0)
		cmd = DDG;
	else
		return cli_usage_error(PROG, "unknown command '%s' (rdp, epsilon, calibrate, ddg)",
		                       argv[1]);
	argc--;
	argv++;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
		const char *v = optarg;

		if (c == 'h') {
			usage(stdout);
			return EXIT_OK;
		}
		if (c == ':')
			return cli_usage_error(PROG, "%s needs a value", argv[optind - 1]);
		if (c == '?')
			return cli_usage_error(PROG, "unknown option '%s'", argv[optind - 1]);
		if (!(takes[cmd] & 1u << c))
			return cli_usage_error(PROG, "%s is not an option of '%s'", opt_name[c],
			                       cmd_name[cmd]);
		seen |= 1u << c;
		switch (c) {
		case O_Q:
			if (!cli_parse_number(v, 0.0, 1.0, false, &q))
				return cli_usage_error(PROG, "--q wants a sampling rate in [0, 1], got '%s'",
				                       v);
			break;
		case O_SIGMA:
			if (!cli_parse_number(v, 0.0, INFINITY, false, &sigma) || sigma <= 0.0)
				return cli_usage_error(PROG, "--sigma wants a number > 0, got '%s'", v);
			break;
		case O_STEPS:
			if (!cli_parse_u64(v, 0, MAX_STEPS, &steps))
				return cli_usage_error(PROG, "--steps wants an integer in [0, 1e15], got '%s'",
				                       v);
			break;
		case O_ORDER:
			if (!parse_order(v, &order))
				return cli_usage_error(PROG, "--order wants a number in (1, %g] or inf, got '%s'",
				                       DP_ORDER_MAX, v);
			break;
		case O_DELTA:
			if (!cli_parse_number(v, 0.0, 1.0, true, &delta) || delta <= 0.0)
				return cli_usage_error(PROG, "--delta wants a number in (0, 1), got '%s'", v);
			break;
		case O_EPSILON:
			if (!cli_parse_number(v, 0.0, INFINITY, false, &target) || target <= 0.0)
				return cli_usage_error(PROG, "--epsilon wants a number > 0, got '%s'", v);
			break;
		case O_ORDERS:
			if ((n = parse_orders(v, orders)) == 0)
				return cli_usage_error(PROG,
				                       "--orders wants a comma-separated list of up to %d "
				                       "orders, each > 1 and <= %g or inf, got '%s'",
				                       DP_MAX_ORDERS, DP_ORDER_MAX, v);
			break;
		case O_DIM:
			if (!cli_parse_u64(v, 1, UINT64_C(1) << 40, &u))
				return cli_usage_error(PROG, "--dim wants an integer in [1, 2^40], got '%s'", v);
			ddg.dim = (double)u;
			break;
		case O_CLIENTS:
			if (!cli_parse_u64(v, 1, UINT32_MAX, &u))
				return cli_usage_error(PROG, "--clients wants an integer >= 1, got '%s'", v);
			ddg.n = (uint32_t)u;
			break;
		case O_L2:
		case O_L1:
			if (!cli_parse_number(v, 0.0, INFINITY, false, c == O_L2 ? &ddg.l2 : &ddg.l1) ||
			    !isfinite(c == O_L2 ? ddg.l2 : ddg.l1))
				return cli_usage_error(PROG, "%s wants a number >= 0, got '%s'", opt_name[c],
				                       v);
			break;
		case O_SIGMA2:
			if (!cli_parse_number(v, 0.25, INFINITY, false, &ddg.sigma2) ||
			    !isfinite(ddg.sigma2))
				return cli_usage_error(PROG, "--sigma2 wants a variance >= 1/4, got '%s'", v);
			break;
		case O_ACCOUNTING:
			if (strcmp(v, "bound") == 0 || strcmp(v, "gaussian") == 0)
				ddg.sub = strcmp(v, "bound") == 0 ? DP_DDG_SUB_GENERAL : DP_DDG_SUB_BINOMIAL;
			else
				return cli_usage_error(PROG, "--accounting wants bound or gaussian, got '%s'",
				                       v);
			break;
		}
	}
	if (optind < argc)
		return cli_usage_error(PROG, "unexpected argument '%s'", argv[optind]);
	for (int o = O_Q; o < O_COUNT; o++)
		if ((takes[cmd] & 1u << o) && !(seen & 1u << o) && !(OPTIONAL_OPTS & 1u << o))
			return cli_usage_error(PROG, "'%s' needs %s", cmd_name[cmd], opt_name[o]);
	if (n == 0)
		n = dp_default_orders(orders);

	switch (cmd) {
	case RDP:
		r = dp_rdp_sgm(q, sigma, order);
		printf("{");
		put_num("q", q, false);
		put_num("sigma", sigma, false);
		put_u64("steps", steps, false);
		put_num("order", order, false);
		put_num("rdp", steps == 0 ? 0.0 : (double)steps * r, true);
		break;
	case EPSILON: {
		dp_accountant acc;
		shoal_err err = dp_accountant_init(&acc, orders, n, delta);

		if (err == SHOAL_OK)
			err = dp_accountant_add(&acc, q, sigma, steps);
		if (err == SHOAL_OK)
			err = dp_accountant_epsilon(&acc, &eps, &best);
		dp_accountant_fini(&acc);
		if (err != SHOAL_OK) {
			fprintf(stderr, PROG ": %s\n", shoal_strerror(err));
			return EXIT_RUNTIME;
		}
		printf("{");
		put_num("epsilon", eps, false);
		put_num("order", best, false);
		put_num("delta", delta, false);
		put_num("q", q, false);
		put_num("sigma", sigma, false);
		put_u64("steps", steps, false);
		put_u64("orders", n, true);
		break;
	}
	case CALIBRATE: {
		double rdp[DP_MAX_ORDERS];
		shoal_err err = dp_calibrate_sigma(q, steps, delta, target, orders, n, &sigma);

		if (err != SHOAL_OK) {
			fprintf(stderr,
			        PROG ": epsilon %g at delta %g is out of reach even with sigma 2^20 "
			        "(%s)\nhint: raise --epsilon or --delta, or give larger --orders; "
			        "the conversion alone costs about log(1/delta) / (order - 1)\n",
			        target, delta, shoal_strerror(err));
			return EXIT_RUNTIME;
		}
		for (size_t i = 0; i < n; i++)
			rdp[i] = steps == 0 ? 0.0 : (double)steps * dp_rdp_sgm(q, sigma, orders[i]);
		dp_epsilon(orders, rdp, n, delta, &eps, &best);
		printf("{");
		put_num("sigma", sigma, false);
		put_num("epsilon", eps, false);
		put_num("order", best, false);
		put_num("target_epsilon", target, false);
		put_num("delta", delta, false);
		put_num("q", q, false);
		put_u64("steps", steps, false);
		put_u64("orders", n, true);
		break;
	}
	case DDG: {
		double eps1;
		if (ddg.l1 < 0)
			ddg.l1 = fmin(sqrt(ddg.dim) * ddg.l2, ddg.l2 * ddg.l2);
		if (dp_ddg_epsilon(&ddg, q, steps, delta, &eps, &best) != SHOAL_OK ||
		    dp_ddg_epsilon(&ddg, 1.0, steps, delta, &eps1, NULL) != SHOAL_OK) {
			fprintf(stderr, PROG ": %s\n", shoal_strerror(SHOAL_EINVAL));
			return EXIT_RUNTIME;
		}
		printf("{");
		put_num("epsilon", eps, false);
		put_num("order", best, false);
		put_num("z", sqrt(ddg.n * ddg.sigma2) / ddg.l2, false);
		put_num("tau", dp_ddg_tau(ddg.sigma2, ddg.n), false);
		put_num("epsilon_no_sampling", eps1, false);
		printf("\"accounting\":\"%s\",", ddg.sub == DP_DDG_SUB_GENERAL ? "bound" : "gaussian");
		put_num("delta", delta, false);
		put_num("q", q, false);
		put_u64("steps", steps, false);
		put_num("dim", ddg.dim, false);
		put_u64("clients", ddg.n, false);
		put_num("l2", ddg.l2, false);
		put_num("l1", ddg.l1, false);
		put_num("sigma2", ddg.sigma2, true);
		break;
	}
	}
	return ferror(stdout) || fflush(stdout) != 0 ? EXIT_RUNTIME : EXIT_OK;
}
