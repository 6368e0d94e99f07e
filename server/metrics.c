/* metrics.c - per-round metrics as JSON lines (the shared format: round,
 * accuracy, loss, clients, dropped, bytes_up, bytes_down, plus virtual_s in
 * simulations), written with jansson. */
#include <math.h>
#include <stdio.h>

#include <jansson.h>

#include "core.h"

static json_t *
real_or_null(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
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
	if (!isnan(st->epsilon)) /* DP on */
		json_object_set_new(o, "epsilon", real_or_null(st->epsilon));
	json_dumpf(o, f, JSON_PRESERVE_ORDER | JSON_COMPACT | JSON_REAL_PRECISION(9));
	fputc('\n', f);
	fflush(f);
	json_decref(o);
}
