/* partition.c - split a dataset among simulated clients: IID, the
 * pathological non-IID "shards" split of McMahan et al. 2017, and the
 * label-skewed Dirichlet split of Hsu et al. 2019. Every split is a pure
 * function of (spec, labels, n_clients, seed). For populations larger than
 * the dataset, the same three kinds as per-client seeded subsets. */
#include "ml/ml.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { PART_IID, PART_SHARDS, PART_DIRICHLET };

/* Parses spec into a kind (and alpha for dirichlet). */
static shoal_err
parse_spec(const char *spec, int *kind, double *alpha)
{
	static const char dir[] = "dirichlet:";
	char *end;
	double a;

	if (spec == NULL)
		return SHOAL_EINVAL;
	if (strcmp(spec, "iid") == 0) {
		*kind = PART_IID;
		return SHOAL_OK;
	}
	if (strcmp(spec, "shards") == 0) {
		*kind = PART_SHARDS;
		return SHOAL_OK;
	}
	if (strncmp(spec, dir, sizeof dir - 1) != 0)
		return SHOAL_EINVAL;
	spec += sizeof dir - 1;
	/* strtod skips leading blanks; a flag value should not have any. */
	if (*spec < '0' || *spec > '9') {
		if (*spec != '.')
			return SHOAL_EINVAL;
	}
	a = strtod(spec, &end);
	if (end == spec || *end != '\0' || !isfinite(a) || a <= 0.0)
		return SHOAL_EINVAL;
	*kind = PART_DIRICHLET;
	*alpha = a;
	return SHOAL_OK;
}

shoal_err
ml_partition_check_spec(const char *spec)
{
	int kind;
	double alpha;

	return parse_spec(spec, &kind, &alpha);
}

/* Standard normal by the Marsaglia polar method. */
static double
normal(ml_rng *r)
{
	double u, v, s;

	do {
		u = 2.0 * ml_rng_uniform(r) - 1.0;
		v = 2.0 * ml_rng_uniform(r) - 1.0;
		s = u * u + v * v;
	} while (s >= 1.0 || s == 0.0);
	return u * sqrt(-2.0 * log(s) / s);
}

/* log of a Gamma(a, 1) sample: Marsaglia & Tsang 2000; for a < 1 the boost
 * G(a) = G(a+1) * U^(1/a), kept in log space because U^(1/a) underflows to
 * 0 for small a (a = 0.01 is a common setting). */
static double
log_gamma_sample(ml_rng *r, double a)
{
	double boost = 0.0, d, c;

	if (a < 1.0) {
		boost = log(1.0 - ml_rng_uniform(r)) / a; /* log U, U in (0,1] */
		a += 1.0;
	}
	d = a - 1.0 / 3.0;
	c = 1.0 / sqrt(9.0 * d);
	for (;;) {
		double x = normal(r), v, u;

		v = 1.0 + c * x;
		if (v <= 0.0)
			continue;
		v = v * v * v;
		u = 1.0 - ml_rng_uniform(r);
		if (u < 1.0 - 0.0331 * (x * x) * (x * x) ||
		    log(u) < 0.5 * x * x + d * (1.0 - v + log(v)))
			return log(d) + log(v) + boost;
	}
}

/* owner[i] = client of example i, for the dirichlet split. */
static shoal_err
dirichlet_owners(const ml_dataset *ds, size_t k, double alpha, ml_rng *r, uint32_t *owner)
{
	uint32_t *members = NULL, *count = NULL;
	double *w = NULL;
	size_t n = ds->n;
	shoal_err err = SHOAL_ENOMEM;

	members = malloc(n * sizeof *members);
	count = calloc(k, sizeof *count);
	w = malloc(k * sizeof *w);
	if (members == NULL || count == NULL || w == NULL)
		goto fail;
	for (unsigned cls = 0; cls < ML_CLASSES; cls++) {
		size_t m = 0, prev = 0;
		double wmax = -INFINITY, sum = 0.0, cum = 0.0;

		for (size_t i = 0; i < n; i++)
			if (ds->labels[i] == cls)
				members[m++] = (uint32_t)i;
		if (m == 0)
			continue;
		ml_rng_shuffle(r, members, m);
		/* Proportions ~ Dirichlet(alpha): normalised Gamma(alpha)
		 * samples, via log-sum-exp. */
		for (size_t c = 0; c < k; c++) {
			w[c] = log_gamma_sample(r, alpha);
			if (w[c] > wmax)
				wmax = w[c];
		}
		for (size_t c = 0; c < k; c++) {
			w[c] = exp(w[c] - wmax);
			sum += w[c];
		}
		/* Client c gets members[cut(c-1) .. cut(c)), cut rounding the
		 * cumulative proportion so the counts add up to m. */
		for (size_t c = 0; c < k; c++) {
			size_t cut;

			cum += w[c];
			cut = c + 1 == k ? m : (size_t)floor(cum / sum * (double)m + 0.5);
			if (cut > m)
				cut = m;
			if (cut < prev)
				cut = prev;
			for (size_t j = prev; j < cut; j++)
				owner[members[j]] = (uint32_t)c;
			count[c] += (uint32_t)(cut - prev);
			prev = cut;
		}
	}
	/* Repair: an empty client takes one example from the largest client
	 * (the last such example in index order, so the result stays a pure
	 * function of the seed). n >= k guarantees the largest has >= 2. */
	for (size_t c = 0; c < k; c++) {
		size_t big = 0;

		if (count[c] > 0)
			continue;
		for (size_t j = 1; j < k; j++)
			if (count[j] > count[big])
				big = j;
		for (size_t i = n; i-- > 0;) {
			if (owner[i] == big) {
				owner[i] = (uint32_t)c;
				break;
			}
		}
		count[big]--;
		count[c]++;
	}
	err = SHOAL_OK;
fail:
	free(members);
	free(count);
	free(w);
	return err;
}

/* Builds p from owner[0..n): counting sort by client, keeping example order
 * inside each client. owner[i] >= k means "dropped". */
static void
group_by_owner(const uint32_t *owner, size_t n, size_t k, ml_partition *p)
{
	memset(p->start, 0, (k + 1) * sizeof *p->start);
	for (size_t i = 0; i < n; i++)
		if (owner[i] < k)
			p->start[owner[i] + 1]++;
	for (size_t c = 0; c < k; c++)
		p->start[c + 1] += p->start[c];
	/* Fill using start[c] as a cursor, then shift the cursors back. */
	for (size_t i = 0; i < n; i++)
		if (owner[i] < k)
			p->idx[p->start[owner[i]]++] = (uint32_t)i;
	for (size_t c = k; c > 0; c--)
		p->start[c] = p->start[c - 1];
	p->start[0] = 0;
}

shoal_err
ml_partition_make(const char *spec, const ml_dataset *ds, size_t n_clients, uint64_t seed,
                  ml_partition *out)
{
	uint32_t *owner = NULL, *tmp = NULL;
	size_t n, k = n_clients;
	double alpha = 0.0;
	shoal_err err;
	ml_rng r;
	int kind;

	memset(out, 0, sizeof *out);
	err = parse_spec(spec, &kind, &alpha);
	if (err != SHOAL_OK)
		return err;
	if (ds == NULL || k == 0 || k > ds->n || ds->n > UINT32_MAX)
		return SHOAL_EINVAL;
	n = ds->n;
	if (kind == PART_SHARDS && n / (2 * k) == 0)
		return SHOAL_EINVAL; /* shards would be empty */
	for (size_t i = 0; i < n; i++)
		if (ds->labels[i] >= ML_CLASSES)
			return SHOAL_EINVAL;
	ml_rng_seed(&r, seed);

	err = SHOAL_ENOMEM;
	out->n_clients = k;
	out->start = malloc((k + 1) * sizeof *out->start);
	out->idx = malloc(n * sizeof *out->idx);
	owner = malloc(n * sizeof *owner);
	if (out->start == NULL || out->idx == NULL || owner == NULL)
		goto fail;

	if (kind == PART_IID) {
		/* Shuffle, then cut into k runs of n/k, the first n%k one longer. */
		for (size_t i = 0; i < n; i++)
			out->idx[i] = (uint32_t)i;
		ml_rng_shuffle(&r, out->idx, n);
		for (size_t c = 0; c <= k; c++)
			out->start[c] = (uint32_t)(c * (n / k) + (c < n % k ? c : n % k));
	} else if (kind == PART_SHARDS) {
		size_t ns = 2 * k, sz = n / ns;
		uint32_t bucket[ML_CLASSES + 1] = {0}, *shard_client;

		/* tmp = [n sorted example ids | ns shard ids]. */
		tmp = malloc((n + ns) * sizeof *tmp);
		if (tmp == NULL)
			goto fail;
		shard_client = tmp + n;
		/* Stable counting sort by label (ties by index). */
		for (size_t i = 0; i < n; i++)
			bucket[ds->labels[i] + 1]++;
		for (int c = 0; c < ML_CLASSES; c++)
			bucket[c + 1] += bucket[c];
		for (size_t i = 0; i < n; i++)
			tmp[bucket[ds->labels[i]]++] = (uint32_t)i;
		/* Deal the shards in a random order, two per client. */
		for (size_t s = 0; s < ns; s++)
			shard_client[s] = (uint32_t)(s / 2);
		ml_rng_shuffle(&r, shard_client, ns);
		/* Shard s = sorted[s*sz .. (s+1)*sz); the tail n % ns is dropped. */
		for (size_t i = 0; i < n; i++)
			owner[i] = UINT32_MAX;
		for (size_t j = 0; j < ns * sz; j++)
			owner[tmp[j]] = shard_client[j / sz];
		group_by_owner(owner, n, k, out);
	} else {
		err = dirichlet_owners(ds, k, alpha, &r, owner);
		if (err != SHOAL_OK)
			goto fail;
		group_by_owner(owner, n, k, out);
	}
	free(owner);
	free(tmp);
	return SHOAL_OK;
fail:
	free(owner);
	free(tmp);
	ml_partition_fini(out);
	return err;
}

void
ml_partition_fini(ml_partition *p)
{
	if (p == NULL)
		return;
	free(p->start);
	free(p->idx);
	memset(p, 0, sizeof *p);
}

/* ---- Per-client subsets ------------------------------------------------ */

shoal_err
ml_subsets_init(ml_subsets *s, const char *spec, const ml_dataset *ds, uint32_t m, uint64_t seed)
{
	uint32_t fill[ML_CLASSES];
	shoal_err err;

	memset(s, 0, sizeof *s);
	if ((err = parse_spec(spec, &s->kind, &s->alpha)) != SHOAL_OK)
		return err;
	if (ds == NULL || m == 0 || m > ds->n || ds->n > UINT32_MAX)
		return SHOAL_EINVAL;
	for (size_t i = 0; i < ds->n; i++) {
		if (ds->labels[i] >= ML_CLASSES)
			return SHOAL_EINVAL;
		s->class_start[ds->labels[i] + 1]++;
	}
	for (int c = 0; c < ML_CLASSES; c++) {
		if (s->kind == PART_SHARDS && s->class_start[c + 1] < m)
			return SHOAL_EINVAL; /* a shard client may need m of one label */
		s->class_start[c + 1] += s->class_start[c];
	}
	if ((s->by_class = malloc(ds->n * sizeof *s->by_class)) == NULL)
		return SHOAL_ENOMEM;
	memcpy(fill, s->class_start, sizeof fill);
	for (size_t i = 0; i < ds->n; i++)
		s->by_class[fill[ds->labels[i]]++] = (uint32_t)i;
	s->m = m;
	s->seed = seed;
	s->n = ds->n;
	return SHOAL_OK;
}

/* Robert Floyd's sampling: k distinct positions of [0, n), marked in the
 * bitmap (n bits, zero on entry), written to out as base[position]. */
static void
floyd(ml_rng *r, const uint32_t *base, uint32_t n, uint32_t k, uint8_t *bits, uint32_t *out)
{
	for (uint32_t j = n - k; j < n; j++) {
		uint32_t t = ml_rng_below(r, j + 1);

		if (bits[t >> 3] & (1u << (t & 7)))
			t = j;
		bits[t >> 3] |= (uint8_t)(1u << (t & 7));
		*out++ = base[t];
	}
}

/* How many of the m examples come from each label (dirichlet): rounded
 * cumulative proportions, then capped at the label's count with the excess
 * moved to labels that have room. */
static void
dirichlet_counts(const ml_subsets *s, ml_rng *r, uint32_t *cnt)
{
	double w[ML_CLASSES], wmax = -INFINITY, sum = 0.0, cum = 0.0;
	uint32_t prev = 0, excess = 0;

	for (int c = 0; c < ML_CLASSES; c++) {
		w[c] = log_gamma_sample(r, s->alpha);
		if (w[c] > wmax)
			wmax = w[c];
	}
	for (int c = 0; c < ML_CLASSES; c++)
		sum += (w[c] = exp(w[c] - wmax));
	for (int c = 0; c < ML_CLASSES; c++) {
		uint32_t cut = c == ML_CLASSES - 1 ? s->m : (uint32_t)llround((cum += w[c]) / sum * s->m);
		uint32_t have = s->class_start[c + 1] - s->class_start[c];

		if (cut < prev)
			cut = prev;
		cnt[c] = cut - prev;
		prev = cut;
		if (cnt[c] > have) {
			excess += cnt[c] - have;
			cnt[c] = have;
		}
	}
	for (int c = 0; c < ML_CLASSES && excess > 0; c++) {
		uint32_t room = s->class_start[c + 1] - s->class_start[c] - cnt[c];
		uint32_t add = room < excess ? room : excess;

		cnt[c] += add;
		excess -= add;
	}
}

shoal_err
ml_subsets_draw(const ml_subsets *s, uint64_t client, uint32_t *idx)
{
	uint32_t cnt[ML_CLASSES] = {0};
	uint8_t *bits = calloc((s->n + 7) / 8, 1);
	ml_rng r;

	if (bits == NULL)
		return SHOAL_ENOMEM;
	ml_rng_seed(&r, ml_seed_mix(s->seed, client));
	if (s->kind == PART_IID) {
		floyd(&r, s->by_class, (uint32_t)s->n, s->m, bits, idx);
		free(bits);
		return SHOAL_OK;
	}
	if (s->kind == PART_SHARDS) {
		uint32_t a = ml_rng_below(&r, ML_CLASSES), b = ml_rng_below(&r, ML_CLASSES - 1);

		b += b >= a; /* distinct from a */
		cnt[a] = s->m / 2;
		cnt[b] = s->m - s->m / 2;
	} else {
		dirichlet_counts(s, &r, cnt);
	}
	/* Label by label; a label's positions are its range of by_class, so
	 * one bitmap serves them all. */
	for (int c = 0; c < ML_CLASSES; c++) {
		uint32_t lo = s->class_start[c];

		floyd(&r, s->by_class + lo, s->class_start[c + 1] - lo, cnt[c], bits, idx);
		idx += cnt[c];
		memset(bits, 0, (s->n + 7) / 8);
	}
	free(bits);
	return SHOAL_OK;
}

void
ml_subsets_fini(ml_subsets *s)
{
	if (s == NULL)
		return;
	free(s->by_class);
	memset(s, 0, sizeof *s);
}
