/* flags.c - algorithm flags shared by shoal-server and shoal-sim (flags.h). */
#include "server/flags.h"

#include "common/cli.h"
#include "common/codec.h"
#include "common/msg.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum {
	F_MOMENTUM, F_WEIGHT_DECAY, F_PROX_MU, F_LR_DECAY, F_SERVER_OPT, F_SERVER_LR,
	F_BETA1, F_BETA2, F_TAU, F_TARGET, F_COMPRESS, F_DOWNLINK,
	F_SECAGG, F_SA_DROPOUT, F_SA_COLLUSION, F_SA_PHASE, F_SA_SCALE,
	F_SAMPLING, F_SAMPLE_RATE, F_DP, F_CLIP, F_NOISE, F_TARGET_EPS, F_EPS_BUDGET, F_DELTA,
	F_DP_MIN_CLIENTS, F_DP_GAMMA, F_DP_ACCOUNTING,
	F_CLIP_QUANTILE, F_CLIP_LR, F_CLIP_COUNT_STD, F_OVER_SELECT,
	F_LOCAL_BUDGET, F_BUDGET_AGG,
	F_ASYNC, F_CONCURRENCY, F_MAX_STALENESS,
};

const struct option srv_flag_options[SRV_FLAG_COUNT] = {
	{"momentum", required_argument, NULL, SRV_FLAG_BASE + F_MOMENTUM},
	{"weight-decay", required_argument, NULL, SRV_FLAG_BASE + F_WEIGHT_DECAY},
	{"prox-mu", required_argument, NULL, SRV_FLAG_BASE + F_PROX_MU},
	{"lr-decay", required_argument, NULL, SRV_FLAG_BASE + F_LR_DECAY},
	{"server-opt", required_argument, NULL, SRV_FLAG_BASE + F_SERVER_OPT},
	{"server-lr", required_argument, NULL, SRV_FLAG_BASE + F_SERVER_LR},
	{"server-beta1", required_argument, NULL, SRV_FLAG_BASE + F_BETA1},
	{"server-beta2", required_argument, NULL, SRV_FLAG_BASE + F_BETA2},
	{"server-tau", required_argument, NULL, SRV_FLAG_BASE + F_TAU},
	{"target-accuracy", required_argument, NULL, SRV_FLAG_BASE + F_TARGET},
	{"over-select", required_argument, NULL, SRV_FLAG_BASE + F_OVER_SELECT},
	{"compress", required_argument, NULL, SRV_FLAG_BASE + F_COMPRESS},
	{"downlink", required_argument, NULL, SRV_FLAG_BASE + F_DOWNLINK},
	{"secagg", required_argument, NULL, SRV_FLAG_BASE + F_SECAGG},
	{"secagg-dropout", required_argument, NULL, SRV_FLAG_BASE + F_SA_DROPOUT},
	{"secagg-collusion", required_argument, NULL, SRV_FLAG_BASE + F_SA_COLLUSION},
	{"secagg-phase-timeout", required_argument, NULL, SRV_FLAG_BASE + F_SA_PHASE},
	{"secagg-scale", required_argument, NULL, SRV_FLAG_BASE + F_SA_SCALE},
	{"sampling", required_argument, NULL, SRV_FLAG_BASE + F_SAMPLING},
	{"sample-rate", required_argument, NULL, SRV_FLAG_BASE + F_SAMPLE_RATE},
	{"dp", required_argument, NULL, SRV_FLAG_BASE + F_DP},
	{"clip", required_argument, NULL, SRV_FLAG_BASE + F_CLIP},
	{"noise-multiplier", required_argument, NULL, SRV_FLAG_BASE + F_NOISE},
	{"target-epsilon", required_argument, NULL, SRV_FLAG_BASE + F_TARGET_EPS},
	{"epsilon-budget", required_argument, NULL, SRV_FLAG_BASE + F_EPS_BUDGET},
	{"delta", required_argument, NULL, SRV_FLAG_BASE + F_DELTA},
	{"dp-min-clients", required_argument, NULL, SRV_FLAG_BASE + F_DP_MIN_CLIENTS},
	{"dp-gamma", required_argument, NULL, SRV_FLAG_BASE + F_DP_GAMMA},
	{"dp-accounting", required_argument, NULL, SRV_FLAG_BASE + F_DP_ACCOUNTING},
	{"clip-quantile", required_argument, NULL, SRV_FLAG_BASE + F_CLIP_QUANTILE},
	{"clip-lr", required_argument, NULL, SRV_FLAG_BASE + F_CLIP_LR},
	{"clip-count-std", required_argument, NULL, SRV_FLAG_BASE + F_CLIP_COUNT_STD},
	{"local-budget", required_argument, NULL, SRV_FLAG_BASE + F_LOCAL_BUDGET},
	{"budget-aggregation", required_argument, NULL, SRV_FLAG_BASE + F_BUDGET_AGG},
	{"async", required_argument, NULL, SRV_FLAG_BASE + F_ASYNC},
	{"concurrency", required_argument, NULL, SRV_FLAG_BASE + F_CONCURRENCY},
	{"max-staleness", required_argument, NULL, SRV_FLAG_BASE + F_MAX_STALENESS},
};

/* --async, --concurrency, --max-staleness: NULL, or why arg is refused. */
static const char *
apply_async(int f, const char *arg, srv_config *cfg)
{
	uint64_t v;

	switch (f) {
	case F_ASYNC:
		if (!cli_parse_u64(arg, 1, SRV_ASYNC_K_MAX, &v))
			return "expected the buffer size K, 1..65536: aggregate every K updates, e.g. 5";
		cfg->async_k = (uint32_t)v;
		return NULL;
	case F_CONCURRENCY:
		if (!cli_parse_u64(arg, 1, 1u << 24, &v))
			return "expected the number of clients training at once, >= 1, e.g. 10";
		cfg->concurrency = (uint32_t)v;
		return NULL;
	default:
		if (!cli_parse_u64(arg, 0, UINT32_MAX, &v))
			return "expected a number of model versions >= 0, e.g. 20";
		cfg->max_staleness = (uint32_t)v;
		return NULL;
	}
}

int
srv_flag_apply(const char *prog, int id, const char *arg, srv_config *cfg)
{
	double v;
	const char *why = NULL;

	switch (id - SRV_FLAG_BASE) {
	case F_MOMENTUM:
		if (cli_parse_number(arg, 0, 1, true, &v))
			cfg->momentum = (float)v;
		else
			why = "expected a number in [0, 1), e.g. 0.9";
		break;
	case F_WEIGHT_DECAY:
		if (cli_parse_number(arg, 0, 1e3, false, &v))
			cfg->weight_decay = (float)v;
		else
			why = "expected a number >= 0, e.g. 1e-4";
		break;
	case F_PROX_MU:
		if (cli_parse_number(arg, 0, 1e6, false, &v))
			cfg->prox_mu = (float)v;
		else
			why = "expected a number >= 0, e.g. 0.01";
		break;
	case F_LR_DECAY:
		if (cli_parse_number(arg, 0, 1, false, &v) && v > 0)
			cfg->lr_decay = (float)v;
		else
			why = "expected a factor in (0, 1], e.g. 0.99";
		break;
	case F_SERVER_OPT:
		if (srv_opt_parse(arg, &cfg->opt.kind) != SHOAL_OK)
			why = "expected fedavg, fedavgm, fedadam or fedyogi";
		break;
	case F_SERVER_LR:
		if (cli_parse_number(arg, 0, 1e6, false, &v) && v > 0)
			cfg->opt.lr = v;
		else
			why = "expected a number > 0, e.g. 1 (fedavg) or 0.01 (fedadam)";
		break;
	case F_BETA1:
		if (cli_parse_number(arg, 0, 1, true, &v))
			cfg->opt.beta1 = v;
		else
			why = "expected a number in [0, 1)";
		break;
	case F_BETA2:
		if (cli_parse_number(arg, 0, 1, true, &v))
			cfg->opt.beta2 = v;
		else
			why = "expected a number in [0, 1)";
		break;
	case F_TAU:
		if (cli_parse_number(arg, 0, 1e3, false, &v) && v > 0)
			cfg->opt.tau = v;
		else
			why = "expected a number > 0, e.g. 1e-3";
		break;
	case F_TARGET:
		if (cli_parse_number(arg, 0, 1, false, &v) && v > 0)
			cfg->target_accuracy = v;
		else
			why = "expected an accuracy in (0, 1], e.g. 0.97";
		break;
	case F_LOCAL_BUDGET:
		if (cli_parse_number(arg, 0, 86400, false, &v) && (v == 0 || v >= 0.001))
			cfg->local_budget_ms = (uint32_t)lround(v * 1000);
		else
			why = "expected seconds of local training, 0 (off) or 0.001..86400, e.g. 2.5";
		break;
	case F_BUDGET_AGG:
		if (strcmp(arg, "fednova") == 0 || strcmp(arg, "fedavg") == 0)
			cfg->budget_agg = strcmp(arg, "fedavg") == 0 ? SRV_BUDGET_FEDAVG
			                                             : SRV_BUDGET_FEDNOVA;
		else
			why = "expected fednova or fedavg";
		break;
	case F_OVER_SELECT:
		if (cli_parse_number(arg, 1, 10, false, &v))
			cfg->over_select = v;
		else
			why = "expected a factor in [1, 10], e.g. 1.3";
		break;
	case F_COMPRESS: {
		cx_config c;
		bool none;
		if (cx_parse_spec(arg, &c, &none) == SHOAL_OK && strlen(arg) <= MSG_MODEL_MAX)
			cfg->compress = arg;
		else
			why = "expected none, topk:RATIO or randk:RATIO, optionally followed by "
			      ",q8, ,q4 or ,f32 (e.g. topk:0.01,q8)";
		break;
	}
	case F_DOWNLINK:
		if (strcmp(arg, "q8") == 0 || strcmp(arg, "full") == 0)
			cfg->downlink_q8 = strcmp(arg, "q8") == 0;
		else
			why = "expected q8 or full";
		break;
	case F_SECAGG: {
		uint64_t k = 0;
		if (strcmp(arg, "off") == 0) {
			cfg->secagg = SRV_SECAGG_OFF;
		} else if (strcmp(arg, "full") == 0) {
			cfg->secagg = SRV_SECAGG_FULL;
		} else if (strcmp(arg, "plus") == 0) {
			cfg->secagg = SRV_SECAGG_PLUS;
			cfg->secagg_k = 0;
		} else if (strncmp(arg, "plus:", 5) == 0 && cli_parse_u64(arg + 5, 2, 65534, &k) &&
		           k % 2 == 0) {
			cfg->secagg = SRV_SECAGG_PLUS;
			cfg->secagg_k = (uint32_t)k;
		} else {
			why = "expected off, full (every pair of clients), plus (SecAgg+ with "
			      "2*ceil(log2 n) neighbours) or plus:K (K even, e.g. plus:8)";
		}
		break;
	}
	case F_SA_DROPOUT:
	case F_SA_COLLUSION:
		if (cli_parse_number(arg, 0, 1, true, &v))
			*(id - SRV_FLAG_BASE == F_SA_DROPOUT ? &cfg->secagg_dropout : &cfg->secagg_collusion) = v;
		else
			why = "expected a fraction in [0, 1), e.g. 0.2";
		break;
	case F_SA_PHASE: {
		uint64_t ms;
		if (cli_parse_u64(arg, 1, UINT32_MAX, &ms))
			cfg->secagg_phase_ms = (uint32_t)ms;
		else
			why = "expected milliseconds >= 1, e.g. 30000";
		break;
	}
	case F_SA_SCALE:
		if (cli_parse_number(arg, 0, 1e6, false, &v))
			cfg->secagg_scale = (float)v;
		else
			why = "expected a number >= 0 (0: adaptive), e.g. 0.05";
		break;
	case F_SAMPLING:
		if (strcmp(arg, "poisson") == 0 || strcmp(arg, "fixed") == 0)
			cfg->sampling = strcmp(arg, "poisson") == 0 ? SRV_SAMPLING_POISSON
			                                            : SRV_SAMPLING_FIXED;
		else
			why = "expected poisson (each client independently with probability "
			      "--sample-rate) or fixed (K of the waiting clients)";
		break;
	case F_SAMPLE_RATE:
		if (cli_parse_number(arg, 0, 1, false, &v) && v > 0)
			cfg->sample_rate = v;
		else
			why = "expected a probability in (0, 1], e.g. 0.1";
		break;
	case F_DP:
		if (strcmp(arg, "off") == 0)
			cfg->dp = SRV_DP_OFF;
		else if (strcmp(arg, "central") == 0)
			cfg->dp = SRV_DP_CENTRAL;
		else if (strcmp(arg, "distributed") == 0)
			cfg->dp = SRV_DP_DISTRIBUTED;
		else
			why = "expected off, central or distributed";
		break;
	case F_DP_MIN_CLIENTS: {
		uint64_t t;
		if (cli_parse_u64(arg, 2, 65535, &t))
			cfg->dp_min_clients = (uint32_t)t;
		else
			why = "expected a number of clients in 2..65535, e.g. 75";
		break;
	}
	case F_DP_GAMMA:
		if (cli_parse_number(arg, 0, 1e6, false, &v) && v > 0)
			cfg->dp_gamma = v;
		else
			why = "expected an integer step > 0 in the update's units, e.g. 0.0005";
		break;
	case F_DP_ACCOUNTING:
		if (strcmp(arg, "bound") == 0)
			cfg->dp_accounting = SRV_DP_ACCT_BOUND;
		else if (strcmp(arg, "gaussian") == 0)
			cfg->dp_accounting = SRV_DP_ACCT_GAUSSIAN;
		else
			why = "expected bound (a proof for discrete noise) or gaussian (the sum's "
			      "noise accounted as the Gaussian of central DP)";
		break;
	case F_CLIP:
		if (cli_parse_number(arg, 0, 1e6, false, &v) && v > 0)
			cfg->clip = v;
		else
			why = "expected an L2 norm > 0, e.g. 1";
		break;
	case F_CLIP_QUANTILE:
		if (cli_parse_number(arg, 0, 1, true, &v) && v > 0)
			cfg->clip_quantile = v;
		else
			why = "expected a quantile in (0, 1), e.g. 0.5";
		break;
	case F_CLIP_LR:
	case F_CLIP_COUNT_STD:
		if (cli_parse_number(arg, 0, 1e6, false, &v) && v > 0)
			*(id - SRV_FLAG_BASE == F_CLIP_LR ? &cfg->clip_lr : &cfg->clip_count_std) = v;
		else
			why = "expected a number > 0, e.g. 0.2";
		break;
	case F_NOISE:
		if (cli_parse_number(arg, 0, 1e6, false, &v) && v > 0)
			cfg->noise_multiplier = v;
		else
			why = "expected a noise multiplier > 0, e.g. 1.1";
		break;
	case F_TARGET_EPS:
	case F_EPS_BUDGET:
		if (cli_parse_number(arg, 0, 1e6, false, &v) && v > 0)
			*(id - SRV_FLAG_BASE == F_TARGET_EPS ? &cfg->target_epsilon
			                                     : &cfg->epsilon_budget) = v;
		else
			why = "expected an epsilon > 0, e.g. 8";
		break;
	case F_DELTA:
		if (cli_parse_number(arg, 0, 1, true, &v) && v > 0)
			cfg->delta = v;
		else
			why = "expected a probability in (0, 1), e.g. 1e-5";
		break;
	case F_ASYNC:
	case F_CONCURRENCY:
	case F_MAX_STALENESS:
		why = apply_async(id - SRV_FLAG_BASE, arg, cfg);
		break;
	default:
		return 1;
	}
	if (why == NULL)
		return 0;
	fprintf(stderr, "%s: --%s '%s': %s\nTry '%s --help' for more information.\n", prog,
	        srv_flag_options[id - SRV_FLAG_BASE].name, arg, why, prog);
	return -1;
}

void
srv_flag_help(FILE *f)
{
	srv_config d;

	srv_config_defaults(&d);
	fprintf(f,
	    "Algorithm (clients receive the first four in every task):\n"
	    "      --momentum M          client SGD momentum, [0, 1) [default: %g]\n"
	    "      --weight-decay W      client L2 weight decay, >= 0 [default: %g]\n"
	    "      --prox-mu MU          FedProx proximal term (mu/2)|w - w_global|^2,\n"
	    "                            >= 0; 0 is plain FedAvg [default: %g]\n"
	    "      --lr-decay D          round r uses lr * D^(r-1), (0, 1] [default: %g]\n"
	    "      --server-opt NAME     fedavg, fedavgm, fedadam or fedyogi (Reddi et al.\n"
	    "                            2021), applied to the averaged update\n"
	    "                            [default: %s]\n"
	    "      --server-lr ETA       server learning rate [default: %g]\n"
	    "      --server-beta1 B      momentum of fedavgm/fedadam/fedyogi [default: %g]\n"
	    "      --server-beta2 B      second-moment decay of fedadam/fedyogi\n"
	    "                            [default: %g]\n"
	    "      --server-tau T        adaptivity of fedadam/fedyogi [default: %g]\n"
	    "      --target-accuracy A   finish as soon as a round's test accuracy reaches\n"
	    "                            A (0 < A <= 1) [default: off]\n"
	    "      --over-select F       select ceil(F*K) clients and aggregate the first K\n"
	    "                            updates; the later ones are refused as stale\n"
	    "                            (fixed sampling, plain rounds) [default: 1]\n"
	    "      --local-budget SEC    local training time budget sent in each task: a\n"
	    "                            client does only the SGD steps that fit SEC on\n"
	    "                            its hardware (at least 1, at most the E epochs)\n"
	    "                            and reports them; 0 is off (PROTOCOL.md section\n"
	    "                            17) [default: 0]\n"
	    "      --budget-aggregation A  with a budget: fednova normalizes each update\n"
	    "                            by its step count (Wang et al. 2020); fedavg\n"
	    "                            averages as without a budget [default: fednova]\n"
	    "\n"
	    "Asynchronous rounds (FedBuff, Nguyen et al. 2022; PROTOCOL.md section 18):\n"
	    "      --async K             buffered asynchronous aggregation: a client that\n"
	    "                            checks in while fewer than --concurrency train\n"
	    "                            gets a task on the current model at once, and\n"
	    "                            every K updates make a round (--rounds counts\n"
	    "                            them): the server optimizer applies\n"
	    "                            sum s(tau)*n*delta / sum n, s(tau) =\n"
	    "                            1/sqrt(1+tau), tau = model versions published\n"
	    "                            since the client's task. Plain mode only (no\n"
	    "                            --secagg, --dp, --over-select); no --state-dir\n"
	    "                            [default: off, synchronous rounds]\n"
	    "      --concurrency C       clients training at once [default: the clients\n"
	    "                            per round]\n"
	    "      --max-staleness S     refuse (error -10, stale) an update more than S\n"
	    "                            versions behind [default: %u]\n"
	    "\n"
	    "Compression (PROTOCOL.md section 12):\n"
	    "      --compress SPEC       update encoding asked of the clients that support\n"
	    "                            it: none, topk:RATIO or randk:RATIO, optionally\n"
	    "                            with ,q8 ,q4 or ,f32 values [default: %s]\n"

	    "      --downlink q8|full    after a client's first full model, send it the\n"
	    "                            model's change in 8 bits when it holds the\n"
	    "                            previous version [default: %s]\n"
	    "\n"
	    "Secure aggregation (PROTOCOL.md section 13; the server sees only the sum):\n"
	    "      --secagg MODE         off, full (SecAgg: every pair of clients), plus\n"
	    "                            (SecAgg+: 2*ceil(log2 n) neighbours) or plus:K\n"
	    "                            [default: %s]. Updates travel on a shared index\n"
	    "                            set of --compress's ratio (none: every\n"
	    "                            coordinate), quantized to its q8/q4 levels\n"
	    "      --secagg-dropout F    fraction of a neighbourhood that may drop out and\n"
	    "                            still be unmasked [default: %g]\n"
	    "      --secagg-collusion G  fraction of a neighbourhood that may collude with\n"
	    "                            the server and learn nothing: threshold\n"
	    "                            t = floor(G*k)+1 [default: %g]\n"
	    "      --secagg-phase-timeout MS  deadline of each phase after training\n"
	    "                            [default: %u]\n"
	    "      --secagg-scale S      shared quantization range; 0 adapts it to twice\n"
	    "                            the largest averaged coordinate [default: %g]\n"
	    "\n"
	    "Sampling and differential privacy (PROTOCOL.md section 14):\n"
	    "      --sampling MODE       fixed: K of the waiting clients, uniformly;\n"
	    "                            poisson: each waiting client independently with\n"
	    "                            probability --sample-rate (K is not used)\n"
	    "                            [default: %s]\n"
	    "      --sample-rate Q       Poisson sampling probability, (0, 1]\n"
	    "      --dp MODE             off; central: the server clips every update to\n"
	    "                            --clip, adds Gaussian noise to their sum, divides\n"
	    "                            by q*clients and tracks (epsilon, delta) with a\n"
	    "                            Renyi-DP accountant; distributed: each client\n"
	    "                            clips, rotates and adds discrete Gaussian noise\n"
	    "                            before masking (needs --secagg). Both need\n"
	    "                            --sampling poisson [default: %s]\n"
	    "      --clip C              L2 bound of each client's update (DP); with\n"
	    "                            --clip-quantile, the starting bound\n"
	    "      --clip-quantile G     central: adapt C each round toward the G-quantile\n"
	    "                            of the update norms from a noised count (Andrew\n"
	    "                            et al. 2021); the count's noise is charged within\n"
	    "                            z [default: off]\n"
	    "      --clip-lr ETA         step of that adaptation [default: 0.2]\n"
	    "      --clip-count-std S    noise stddev on the count [default: q*min\n"
	    "                            clients/20]\n"
	    "      --noise-multiplier Z  noise stddev Z*C on the sum; or:\n"
	    "      --target-epsilon E    calibrate Z so that --rounds rounds spend E\n"
	    "      --epsilon-budget E    with --noise-multiplier: finish before a round\n"
	    "                            would take epsilon past E [default: none]\n"
	    "      --delta D             delta of (epsilon, delta), below 1/clients\n"
	    "                            [default: %g]\n"
	    "      --dp-min-clients T    distributed: the noise is sized for T clients;\n"
	    "                            a round with fewer in the sum is aborted\n"
	    "                            [default: q * min clients * (1 - dropout)]\n"
	    "      --dp-gamma G          distributed: integer step of the encoding\n"
	    "                            [default: automatic, C / 2^b]\n"
	    "      --dp-accounting A     distributed: bound (Kairouz et al. with Zhu and\n"
	    "                            Wang's subsampling bound, a proof) or gaussian\n"
	    "                            (the noise accounted as central DP's Gaussian:\n"
	    "                            tighter, assumes more) [default: bound]\n",
	    (double)d.momentum, (double)d.weight_decay, (double)d.prox_mu, (double)d.lr_decay,
	    srv_opt_name(d.opt.kind), d.opt.lr, d.opt.beta1, d.opt.beta2, d.opt.tau,
	    d.max_staleness, d.compress,
	    d.downlink_q8 ? "q8" : "full", d.secagg == SRV_SECAGG_OFF ? "off" : "on",
	    d.secagg_dropout, d.secagg_collusion, d.secagg_phase_ms, (double)d.secagg_scale,
	    d.sampling == SRV_SAMPLING_POISSON ? "poisson" : "fixed",
	    d.dp == SRV_DP_OFF ? "off" : "central", d.delta);
}

void
srv_flag_merge(struct option *out, const struct option *own, size_t n)
{
	memcpy(out, own, n * sizeof *out);
	memcpy(out + n, srv_flag_options, sizeof srv_flag_options);
	memset(&out[n + SRV_FLAG_COUNT], 0, sizeof *out);
}
