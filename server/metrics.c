/* metrics.c - per-round metrics as JSON lines (the shared format: round,
 * accuracy, loss, clients, dropped, bytes_up, bytes_down, plus virtual_s in
 * simulations, and the refusals by reason), written with jansson. */
#include <math.h>
#include <stdio.h>

#include <jansson.h>

#include "core.h"

static json_t *
real_or_null(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

/* Key of error code -i in "refused" (PROTOCOL.md section 5.1). */
static const char *
refused_key(int i, char *buf, size_t n)
{
	static const char *const names[] = {
		[1] = "nomem", [5] = "truncated", [6] = "malformed", [7] = "version", [8] = "type",
		[9] = "too_big", [10] = "stale", [11] = "unknown_client", [12] = "dim",
		[13] = "nonfinite", [14] = "dup", [15] = "state", [16] = "not_selected",
		[20] = "model", [21] = "full", [22] = "aborted", [23] = "crypto", [24] = "caps",
		[25] = "rate", [26] = "unlisted", [27] = "bad_signature", [28] = "nonce",
		[29] = "token", [30] = "identity",
	};

	if (i < (int)(sizeof names / sizeof names[0]) && names[i] != NULL)
		return names[i];
	snprintf(buf, n, "code_%d", -i);
	return buf;
}

static json_t *
refused_object(const srv_round_stats *st)
{
	json_t *r = json_object();
	char buf[24];

	for (int i = 1; i < SRV_CODES; i++)
		if (st->refused[i] > 0)
			json_object_set_new(r, refused_key(i, buf, sizeof buf),
			                    json_integer(st->refused[i]));
	if (st->conns_refused > 0)
		json_object_set_new(r, "connections", json_integer(st->conns_refused));
	return r;
}

void
srv_metrics_write(FILE *f, const srv_round_stats *st, double virtual_s)
{
	json_t *o = json_object();

	if (o == NULL)
		return;
	json_object_set_new(o, "round", json_integer(st->round));
	json_object_set_new(o, "accuracy", real_or_null(st->accuracy));
	json_object_set_new(o, "loss", real_or_null(st->loss));
	json_object_set_new(o, "clients", json_integer(st->reported));
	json_object_set_new(o, "dropped", json_integer(st->dropped));
	json_object_set_new(o, "bytes_up", json_integer((json_int_t)st->bytes_up));
	json_object_set_new(o, "bytes_down", json_integer((json_int_t)st->bytes_down));
	if (virtual_s >= 0)
		json_object_set_new(o, "virtual_s", json_real(virtual_s));
	json_object_set_new(o, "selected", json_integer(st->selected));
	json_object_set_new(o, "rejected", json_integer(st->rejected));
	json_object_set_new(o, "abandoned", json_boolean(st->abandoned));
	json_object_set_new(o, "train_loss", real_or_null(st->train_loss));
	json_object_set_new(o, "refused", refused_object(st));
	if (st->conns_open > 0)
		json_object_set_new(o, "connections", json_integer(st->conns_open));
	if (st->tau_eff > 0) /* a local time budget */
		json_object_set_new(o, "tau_eff", json_real(st->tau_eff));
	if (st->async) {
		json_object_set_new(o, "staleness", real_or_null(st->staleness));
		json_object_set_new(o, "staleness_max", json_integer(st->staleness_max));
	}
	if (!isnan(st->epsilon)) /* DP on */
		json_object_set_new(o, "epsilon", real_or_null(st->epsilon));
	json_dumpf(o, f, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_REAL_PRECISION(9));
	fputc('\n', f);
	fflush(f);
	json_decref(o);
}
