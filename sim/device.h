/* device.h - the simulator's device model: profiles of edge devices
 * (compute, links, memory, availability, failures), populations that mix
 * them, and the virtual clock's per-client arithmetic.
 *
 * Everything here is a pure function of (profile, seed, client, round,
 * time): no clocks, no global state, no I/O except sim_device_load_file.
 * Randomness is counter-based (a hash of seed, client and a counter), so a
 * client's availability and failures do not depend on which thread or
 * process asks, nor in which order. Where the built-in numbers come from:
 * docs/devices.md. */
#ifndef SHOAL_SIM_DEVICE_H
#define SHOAL_SIM_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shoal/err.h"

#define SIM_DEVICE_NAME_MAX 31u
#define SIM_DEVICE_MAX 32u /* profiles in one set (built-ins included) */

/* One device class. Units are SI: FLOP/s, bytes/s, seconds, bytes. */
typedef struct sim_device {
	char name[SIM_DEVICE_NAME_MAX + 1];
	double flops;       /* sustained training compute, FLOP/s, > 0 */
	double up_Bps;      /* uplink bandwidth, bytes/s, > 0 */
	double down_Bps;    /* downlink bandwidth, bytes/s, > 0 */
	double rtt_s;       /* round-trip time, >= 0 */
	uint64_t mem_bytes; /* memory a client may use, > 0 */
	double on_s;        /* mean length of an available period, > 0 */
	double off_s;       /* mean length of an unavailable period, >= 0
	                       (0: always available) */
	double fail_p;      /* probability of failing mid-round, [0, 1] */
} sim_device;

/* A set of profiles: the built-ins, plus those of profile files. */
typedef struct sim_device_set {
	size_t n;
	sim_device dev[SIM_DEVICE_MAX];
} sim_device_set;

/* The built-ins: pi-zero-2w, pi4, pi5, laptop, phone-low, phone-high. */
void sim_device_set_builtins(sim_device_set *set);
/* The profile called name, or NULL. */
const sim_device *sim_device_find(const sim_device_set *set, const char *name);

/* Adds (or replaces, by name) the profiles of a JSON file (jansson):
 *
 *   { "pi4-slow-wifi": { "base": "pi4", "up_mbps": 2, "fail": 0.05 },
 *     "board-x": { "gflops": 3, "up_mbps": 10, "down_mbps": 50,
 *                  "rtt_ms": 40, "mem_mb": 512, "on_h": 24, "off_h": 1,
 *                  "fail": 0.02 } }
 *
 * Keys: gflops (sustained training GFLOP/s), up_mbps and down_mbps
 * (megabits/s), rtt_ms, mem_mb (MiB), on_h and off_h (mean hours of the
 * available and unavailable periods; off_h 0 = always on), fail
 * (probability of failing mid-round), base (a profile defined earlier or
 * built in, whose values the others override). Without base every key is
 * required. Names are 1..31 of [a-z0-9._-].
 * Errors: SHOAL_EIO (unreadable), SHOAL_EFORMAT (not JSON, not an object,
 * an unknown key, a value of the wrong type, a missing key, an unknown
 * base), SHOAL_EINVAL (a value out of range, a bad name), SHOAL_ETOOBIG
 * (more than SIM_DEVICE_MAX profiles); each logged with the file, the
 * profile and the key. On error *set is unchanged. */
shoal_err sim_device_load_file(sim_device_set *set, const char *path);

/* A population's mix: profile indices into a set and their fractions. */
typedef struct sim_mix {
	size_t n;
	uint32_t dev[SIM_DEVICE_MAX];
	double frac[SIM_DEVICE_MAX];
} sim_mix;

/* Parses "pi4:0.5,laptop:0.2,phone-low:0.3" (fractions > 0 that sum to 1
 * within 1e-6; each name once) or a single name (fraction 1).
 * Errors: SHOAL_EINVAL (syntax, unknown name - logged with the known
 * ones -, duplicate, fractions not summing to 1). */
shoal_err sim_mix_parse(const sim_device_set *set, const char *spec, sim_mix *out);

/* Gives each of n clients a device class: exactly round(frac * n) clients
 * per class (largest remainders; ties to the earlier class), spread over
 * the client ids by a permutation seeded with seed. class_of[i] is an index
 * into mix->dev. Errors: SHOAL_ENOMEM. */
shoal_err sim_mix_assign(const sim_mix *mix, uint64_t seed, uint32_t n, uint8_t *class_of);

/* ---- the virtual clock ------------------------------------------------- */

/* The three terms of a client's round (PROTOCOL-independent): download
 * the task, train, upload the update and wait a round trip. */
typedef struct sim_round_time {
	double down_s;  /* bytes_down / down_Bps */
	double train_s; /* train_flops / flops */
	double up_s;    /* bytes_up / up_Bps + rtt_s */
	double total_s; /* their sum */
} sim_round_time;

sim_round_time sim_device_round_time(const sim_device *d, uint64_t bytes_down,
                                     double train_flops, uint64_t bytes_up);

/* Local steps a device can do within budget_s of training time, at
 * step_flops each: floor(budget_s * flops / step_flops), at least 1 and at
 * most max_steps (time-budgeted local work, FedNova). */
uint32_t sim_device_steps_in(const sim_device *d, double budget_s, double step_flops,
                             uint32_t max_steps);

/* Whether a client fits its device's memory: 3 x the model's float32
 * bytes (global model, local model, error-feedback residual) + its local
 * data + 8 MiB of program and buffers, the budget shoal-client is held to
 * (docs/raspberry-pi.md, section 7), <= mem_bytes. *need gets that sum. */
bool sim_device_fits(const sim_device *d, uint64_t model_bytes, uint64_t data_bytes,
                     uint64_t *need);

/* ---- availability and failures ------------------------------------------ */

/* A client's availability: alternating on and off periods with
 * exponentially distributed lengths of means on_s and off_s, started in
 * the stationary state (on with probability on_s / (on_s + off_s)). 16
 * bytes per client; queries must come at non-decreasing times. */
typedef struct sim_avail {
	double until;    /* end of the current period */
	uint32_t period; /* index of the current period */
	uint32_t on;     /* 1: available */
} sim_avail;

void sim_avail_init(sim_avail *a, const sim_device *d, uint64_t seed, uint32_t client);
/* Whether the client is available at t (>= the previous query's t). */
bool sim_avail_at(sim_avail *a, const sim_device *d, uint64_t seed, uint32_t client, double t);
/* When the current available period ends (t must be in it), for
 * availability-aware selection. */
double sim_avail_until(const sim_avail *a);

/* Whether the client fails in this training (probability fail_p), and if
 * so at which fraction of its round time, in [0, 1). A training is named
 * by its round and its attempt, the count of the client's earlier
 * trainings in that round (asynchronous rounds hand a client several
 * tasks under one round id; synchronous ones one, attempt 0): every
 * (round, attempt) draws independently. */
bool sim_device_fails(const sim_device *d, uint64_t seed, uint32_t client, uint32_t round,
                      uint32_t attempt, double *at_fraction);

#endif
