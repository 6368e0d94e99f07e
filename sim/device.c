/* device.c - device profiles, population mixes, the per-client virtual
 * clock, availability and failures (sim/device.h). The built-in numbers
 * and where they come from are in docs/devices.md. */
#include "sim/device.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/log.h"
#include "ml/ml.h"

#define MBIT (1e6 / 8.0) /* bytes/s in one megabit/s */
#define MIB 1048576.0
#define HOUR 3600.0

/* Built-ins (docs/devices.md): sustained training GFLOP/s, up and down
 * megabit/s, RTT ms, memory MiB, mean on and off hours, failure
 * probability per round. */
static const struct {
	const char *name;
	double gflops, up_mbps, down_mbps, rtt_ms, mem_mb, on_h, off_h, fail;
} builtin[] = {
	{"pi-zero-2w", 1.0, 8.0, 20.0, 30.0, 256.0, 168.0, 1.0, 0.02},
	{"pi4", 8.0, 20.0, 100.0, 20.0, 1024.0, 168.0, 1.0, 0.01},
	{"pi5", 20.0, 20.0, 100.0, 20.0, 2048.0, 168.0, 1.0, 0.01},
	{"laptop", 50.0, 20.0, 100.0, 20.0, 2048.0, 8.0, 16.0, 0.05},
	{"phone-low", 2.0, 5.0, 20.0, 60.0, 256.0, 2.0, 10.0, 0.10},
	{"phone-high", 10.0, 30.0, 100.0, 40.0, 1024.0, 3.0, 9.0, 0.05},
};

static void
set_from_units(sim_device *d, double gflops, double up_mbps, double down_mbps, double rtt_ms,
               double mem_mb, double on_h, double off_h, double fail)
{
	d->flops = gflops * 1e9;
	d->up_Bps = up_mbps * MBIT;
	d->down_Bps = down_mbps * MBIT;
	d->rtt_s = rtt_ms / 1e3;
	d->mem_bytes = (uint64_t)(mem_mb * MIB);
	d->on_s = on_h * HOUR;
	d->off_s = off_h * HOUR;
	d->fail_p = fail;
}

void
sim_device_set_builtins(sim_device_set *set)
{
	memset(set, 0, sizeof *set);
	for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++) {
		sim_device *d = &set->dev[set->n++];

		snprintf(d->name, sizeof d->name, "%s", builtin[i].name);
		set_from_units(d, builtin[i].gflops, builtin[i].up_mbps, builtin[i].down_mbps,
		               builtin[i].rtt_ms, builtin[i].mem_mb, builtin[i].on_h, builtin[i].off_h,
		               builtin[i].fail);
	}
}

const sim_device *
sim_device_find(const sim_device_set *set, const char *name)
{
	for (size_t i = 0; name != NULL && i < set->n; i++)
		if (strcmp(set->dev[i].name, name) == 0)
			return &set->dev[i];
	return NULL;
}

static bool
name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > SIM_DEVICE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]) || s[i] == '.' ||
		      s[i] == '_' || s[i] == '-'))
			return false;
	return true;
}

/* ---- profile files ------------------------------------------------------- */

enum { K_GFLOPS, K_UP, K_DOWN, K_RTT, K_MEM, K_ON, K_OFF, K_FAIL, K_N };

static const struct {
	const char *key;
	double lo, hi;  /* allowed range, inclusive */
	bool lo_open;   /* lo itself is not allowed */
} keys[K_N] = {
	[K_GFLOPS] = {"gflops", 0.0, 1e6, true},
	[K_UP] = {"up_mbps", 0.0, 1e6, true},
	[K_DOWN] = {"down_mbps", 0.0, 1e6, true},
	[K_RTT] = {"rtt_ms", 0.0, 1e6, false},
	[K_MEM] = {"mem_mb", 0.0, 1e9, true},
	[K_ON] = {"on_h", 0.0, 1e6, true},
	[K_OFF] = {"off_h", 0.0, 1e6, false},
	[K_FAIL] = {"fail", 0.0, 1.0, false},
};

static void
to_units(const sim_device *d, double v[K_N])
{
	v[K_GFLOPS] = d->flops / 1e9;
	v[K_UP] = d->up_Bps / MBIT;
	v[K_DOWN] = d->down_Bps / MBIT;
	v[K_RTT] = d->rtt_s * 1e3;
	v[K_MEM] = (double)d->mem_bytes / MIB;
	v[K_ON] = d->on_s / HOUR;
	v[K_OFF] = d->off_s / HOUR;
	v[K_FAIL] = d->fail_p;
}

/* One profile object into *d (named name), over the values of its base. */
static shoal_err
parse_profile(const sim_device_set *set, const char *path, const char *name, json_t *obj,
              sim_device *d)
{
	double v[K_N];
	bool have[K_N] = {false};
	const char *key;
	json_t *val;

	if (!name_ok(name)) {
		log_error("%s: profile name '%s': use 1 to %u characters of a-z, 0-9, '.', '_', '-'",
		          path, name, SIM_DEVICE_NAME_MAX);
		return SHOAL_EINVAL;
	}
	if (!json_is_object(obj)) {
		log_error("%s: profile '%s' is not an object of keys and numbers", path, name);
		return SHOAL_EFORMAT;
	}
	memset(d, 0, sizeof *d);
	memset(v, 0, sizeof v);
	val = json_object_get(obj, "base");
	if (val != NULL) {
		const sim_device *b = json_is_string(val) ? sim_device_find(set, json_string_value(val))
		                                          : NULL;
		if (b == NULL) {
			log_error("%s: profile '%s': base must name a built-in or earlier profile",
			          path, name);
			return SHOAL_EFORMAT;
		}
		to_units(b, v);
		for (int k = 0; k < K_N; k++)
			have[k] = true;
	}
	json_object_foreach(obj, key, val) {
		int k;

		if (strcmp(key, "base") == 0)
			continue;
		for (k = 0; k < K_N && strcmp(keys[k].key, key) != 0; k++)
			;
		if (k == K_N) {
			log_error("%s: profile '%s': unknown key '%s' (known: base, gflops, up_mbps, "
			          "down_mbps, rtt_ms, mem_mb, on_h, off_h, fail)", path, name, key);
			return SHOAL_EFORMAT;
		}
		if (!json_is_number(val)) {
			log_error("%s: profile '%s': %s must be a number", path, name, key);
			return SHOAL_EFORMAT;
		}
		v[k] = json_number_value(val);
		if (!isfinite(v[k]) || v[k] < keys[k].lo || (keys[k].lo_open && v[k] == keys[k].lo) ||
		    v[k] > keys[k].hi) {
			log_error("%s: profile '%s': %s = %g is out of range %c%g, %g]", path, name, key,
			          v[k], keys[k].lo_open ? '(' : '[', keys[k].lo, keys[k].hi);
			return SHOAL_EINVAL;
		}
		have[k] = true;
	}
	for (int k = 0; k < K_N; k++)
		if (!have[k]) {
			log_error("%s: profile '%s': %s is missing (give it, or a base profile)", path,
			          name, keys[k].key);
			return SHOAL_EFORMAT;
		}
	snprintf(d->name, sizeof d->name, "%s", name);
	set_from_units(d, v[K_GFLOPS], v[K_UP], v[K_DOWN], v[K_RTT], v[K_MEM], v[K_ON], v[K_OFF],
	               v[K_FAIL]);
	return SHOAL_OK;
}

shoal_err
sim_device_load_file(sim_device_set *set, const char *path)
{
	sim_device_set *tmp;
	json_error_t jerr;
	shoal_err err = SHOAL_OK;
	const char *name;
	json_t *root, *obj;
	FILE *f;

	f = fopen(path, "r");
	if (f == NULL) {
		log_error("%s: %s", path, strerror(errno));
		return SHOAL_EIO;
	}
	root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
	fclose(f);
	if (root == NULL) {
		log_error("%s:%d:%d: not a JSON profile file: %s", path, jerr.line, jerr.column,
		          jerr.text);
		return SHOAL_EFORMAT;
	}
	if (!json_is_object(root)) {
		log_error("%s: expected an object of named profiles, e.g. "
		          "{\"my-pi\": {\"base\": \"pi4\", \"up_mbps\": 5}}", path);
		json_decref(root);
		return SHOAL_EFORMAT;
	}
	/* Work on a copy, so a bad file leaves *set as it was. Profiles are
	 * taken in file order (jansson keeps insertion order). */
	tmp = malloc(sizeof *tmp);
	if (tmp == NULL) {
		json_decref(root);
		return SHOAL_ENOMEM;
	}
	*tmp = *set;
	json_object_foreach(root, name, obj) {
		sim_device d;
		size_t i;

		if ((err = parse_profile(tmp, path, name, obj, &d)) != SHOAL_OK)
			break;
		for (i = 0; i < tmp->n && strcmp(tmp->dev[i].name, name) != 0; i++)
			;
		if (i == tmp->n && tmp->n == SIM_DEVICE_MAX) {
			log_error("%s: more than %u profiles in all", path, SIM_DEVICE_MAX);
			err = SHOAL_ETOOBIG;
			break;
		}
		tmp->dev[i] = d;
		if (i == tmp->n)
			tmp->n++;
	}
	if (err == SHOAL_OK)
		*set = *tmp;
	free(tmp);
	json_decref(root);
	return err;
}

/* ---- mixes ------------------------------------------------------------------ */

shoal_err
sim_mix_parse(const sim_device_set *set, const char *spec, sim_mix *out)
{
	char buf[1024], *save = NULL, *item;
	double sum = 0.0;

	memset(out, 0, sizeof *out);
	if (spec == NULL || snprintf(buf, sizeof buf, "%s", spec) >= (int)sizeof buf || !*buf) {
		log_error("--devices: give NAME[:FRACTION],... e.g. pi4:0.5,laptop:0.2,phone-low:0.3");
		return SHOAL_EINVAL;
	}
	for (item = strtok_r(buf, ",", &save); item != NULL; item = strtok_r(NULL, ",", &save)) {
		char *colon = strchr(item, ':'), *end;
		const sim_device *d;
		double f = 1.0;

		if (colon != NULL) {
			*colon = '\0';
			errno = 0;
			f = strtod(colon + 1, &end);
			if (errno != 0 || end == colon + 1 || *end != '\0' || !(f > 0.0) || f > 1.0) {
				log_error("--devices: '%s': the fraction must be in (0, 1]", colon + 1);
				return SHOAL_EINVAL;
			}
		} else if (strchr(spec, ',') != NULL) {
			log_error("--devices: '%s' needs a fraction (NAME:FRACTION) in a mix", item);
			return SHOAL_EINVAL;
		}
		d = sim_device_find(set, item);
		if (d == NULL) {
			char known[SIM_DEVICE_MAX * (SIM_DEVICE_NAME_MAX + 2) + 1] = "";
			for (size_t i = 0; i < set->n; i++) {
				strcat(known, i ? ", " : "");
				strcat(known, set->dev[i].name);
			}
			log_error("--devices: unknown device '%s' (known: %s; --device-file adds more)",
			          item, known);
			return SHOAL_EINVAL;
		}
		for (size_t i = 0; i < out->n; i++)
			if (out->dev[i] == (uint32_t)(d - set->dev)) {
				log_error("--devices: '%s' is given twice", item);
				return SHOAL_EINVAL;
			}
		out->dev[out->n] = (uint32_t)(d - set->dev);
		out->frac[out->n++] = f;
		sum += f;
	}
	if (fabs(sum - 1.0) > 1e-6) {
		log_error("--devices: the fractions add up to %g, not 1", sum);
		return SHOAL_EINVAL;
	}
	return SHOAL_OK;
}

shoal_err
sim_mix_assign(const sim_mix *mix, uint64_t seed, uint32_t n, uint8_t *class_of)
{
	uint64_t count[SIM_DEVICE_MAX], given = 0;
	double rem[SIM_DEVICE_MAX];
	uint32_t *perm;
	ml_rng r;
	size_t i;

	for (i = 0; i < mix->n; i++) {
		double exact = mix->frac[i] * n;

		count[i] = (uint64_t)floor(exact);
		rem[i] = exact - (double)count[i];
		given += count[i];
	}
	/* Largest remainders get the clients that flooring left over. */
	while (given < n) {
		size_t best = 0;
		for (i = 1; i < mix->n; i++)
			if (rem[i] > rem[best])
				best = i;
		count[best]++;
		rem[best] = -1.0;
		given++;
	}
	/* Classes in blocks, then a seeded shuffle of the blocks over ids. */
	perm = malloc((n > 0 ? n : 1) * sizeof *perm);
	if (perm == NULL)
		return SHOAL_ENOMEM;
	for (uint32_t c = 0; c < n; c++)
		perm[c] = c;
	ml_rng_seed(&r, seed ^ 0x6465766963657321ull); /* "devices!" */
	ml_rng_shuffle(&r, perm, n);
	given = 0;
	for (i = 0; i < mix->n; i++)
		for (uint64_t j = 0; j < count[i] && given < n; j++, given++)
			class_of[perm[given]] = (uint8_t)i;
	free(perm);
	return SHOAL_OK;
}

/* ---- the virtual clock -------------------------------------------------------- */

sim_round_time
sim_device_round_time(const sim_device *d, uint64_t bytes_down, double train_flops,
                      uint64_t bytes_up)
{
	sim_round_time t;

	t.down_s = (double)bytes_down / d->down_Bps;
	t.train_s = train_flops / d->flops;
	t.up_s = (double)bytes_up / d->up_Bps + d->rtt_s;
	t.total_s = t.down_s + t.train_s + t.up_s;
	return t;
}

uint32_t
sim_device_steps_in(const sim_device *d, double budget_s, double step_flops, uint32_t max_steps)
{
	double s = step_flops > 0.0 ? floor(budget_s * d->flops / step_flops) : (double)max_steps;

	if (!(s >= 1.0))
		return 1;
	return s >= (double)max_steps ? max_steps : (uint32_t)s;
}

bool
sim_device_fits(const sim_device *d, uint64_t model_bytes, uint64_t data_bytes, uint64_t *need)
{
	uint64_t n = 3 * model_bytes + data_bytes + 8 * (uint64_t)MIB;

	if (need != NULL)
		*need = n;
	return n <= d->mem_bytes;
}

/* ---- availability and failures ------------------------------------------------ */

/* splitmix64's finalizer: a bijective 64-bit mix. */
static uint64_t
mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1) from (seed, client, stream, counter). */
static double
unit(uint64_t seed, uint32_t client, uint32_t stream, uint32_t counter)
{
	uint64_t h = mix64(mix64(seed ^ 0x73686f616c00ull) ^ ((uint64_t)client << 32 | stream));

	h = mix64(h ^ (uint64_t)counter * 0x9e3779b97f4a7c15ull);
	return ((double)(h >> 11) + 0.5) * 0x1p-53;
}

enum { STREAM_PHASE = 1, STREAM_PERIOD = 2, STREAM_FAIL = 3, STREAM_FAIL_AT = 4, STREAM_RETRY = 16 };

static double
period_len(const sim_device *d, uint64_t seed, uint32_t client, uint32_t period, bool on)
{
	return -log(unit(seed, client, STREAM_PERIOD, period)) * (on ? d->on_s : d->off_s);
}

void
sim_avail_init(sim_avail *a, const sim_device *d, uint64_t seed, uint32_t client)
{
	/* Stationary start: on with probability on/(on+off); by memorylessness
	 * the rest of the current period is a fresh exponential. */
	a->period = 0;
	a->on = d->off_s <= 0.0 || unit(seed, client, STREAM_PHASE, 0) * (d->on_s + d->off_s) <
	                           d->on_s;
	a->until = d->off_s <= 0.0 ? INFINITY : period_len(d, seed, client, 0, a->on);
}

bool
sim_avail_at(sim_avail *a, const sim_device *d, uint64_t seed, uint32_t client, double t)
{
	while (t >= a->until) {
		a->period++;
		a->on = !a->on;
		a->until += period_len(d, seed, client, a->period, a->on);
	}
	return a->on != 0;
}

double
sim_avail_until(const sim_avail *a)
{
	return a->until;
}

bool
sim_device_fails(const sim_device *d, uint64_t seed, uint32_t client, uint32_t round,
                 uint32_t attempt, double *at_fraction)
{
	/* Attempt 0 on the first two streams; attempt k > 0 on its own pair. */
	uint32_t st = attempt == 0 ? STREAM_FAIL : STREAM_RETRY + 2 * (attempt - 1);
	uint32_t st_at = attempt == 0 ? STREAM_FAIL_AT : st + 1;
	bool fails = unit(seed, client, st, round) < d->fail_p;

	if (at_fraction != NULL)
		*at_fraction = fails ? unit(seed, client, st_at, round) : 1.0;
	return fails;
}
