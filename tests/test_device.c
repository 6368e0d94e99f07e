/* test_device.c - the simulator's device model (sim/device.h): round times
 * on hand-computed cases, local steps in a time budget, the memory check,
 * profile files and their errors, population mixes, and availability and
 * failure statistics against the configured rates. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sim/device.h"

/* A device with round numbers, so the expected times are exact. */
static sim_device
plain_device(void)
{
	sim_device d = {
		.name = "plain",
		.flops = 2e9,      /* 2 GFLOP/s */
		.up_Bps = 250000,  /* 2 Mbit/s */
		.down_Bps = 1e6,   /* 8 Mbit/s */
		.rtt_s = 0.05,
		.mem_bytes = 64u << 20,
		.on_s = 3600,
		.off_s = 1800,
		.fail_p = 0.1,
	};
	return d;
}

static void
test_round_time_by_hand(void **state)
{
	sim_device d = plain_device(), pi4;
	sim_device_set set;
	sim_round_time t;

	(void)state;
	/* 2 MB down = 2 s; 3 GFLOP = 1.5 s; 500 kB up = 2 s + 0.05 s RTT. */
	t = sim_device_round_time(&d, 2000000, 3e9, 500000);
	assert_true(t.down_s == 2.0);
	assert_true(t.train_s == 1.5);
	assert_true(fabs(t.up_s - 2.05) < 1e-12);
	assert_true(fabs(t.total_s - 5.55) < 1e-12);
	/* Nothing to move: the round trip alone. */
	t = sim_device_round_time(&d, 0, 0.0, 0);
	assert_true(t.total_s == 0.05);
	/* The built-in pi4 (8 GFLOP/s, 20/100 Mbit/s, 20 ms): one 2NN round
	 * of 600 examples, E = 1 (879,200 FLOP each: 0.52752 GFLOP), a full
	 * float32 model down (796,840 B) and a 1% q8 update up (4,160 B). */
	sim_device_set_builtins(&set);
	pi4 = *sim_device_find(&set, "pi4");
	t = sim_device_round_time(&pi4, 796840, 600 * 879200.0, 4160);
	assert_true(fabs(t.down_s - 796840 / 12.5e6) < 1e-12);   /* 0.0637 s */
	assert_true(fabs(t.train_s - 0.06594) < 1e-12);
	assert_true(fabs(t.up_s - (4160 / 2.5e6 + 0.02)) < 1e-12); /* 0.0217 s */
	assert_true(fabs(t.total_s - (0.0637472 + 0.06594 + 0.021664)) < 1e-9);
}

static void
test_steps_in_budget(void **state)
{
	sim_device d = plain_device();

	(void)state;
	/* 2 GFLOP/s, 1 s budget, 0.3 GFLOP a step: 6 steps (6.67 floored). */
	assert_int_equal(sim_device_steps_in(&d, 1.0, 3e8, 100), 6);
	assert_int_equal(sim_device_steps_in(&d, 1.0, 3e8, 4), 4);   /* capped */
	assert_int_equal(sim_device_steps_in(&d, 0.01, 3e8, 100), 1); /* at least one */
	assert_int_equal(sim_device_steps_in(&d, 0.0, 3e8, 100), 1);
}

static void
test_memory_fit(void **state)
{
	sim_device d = plain_device();
	uint64_t need = 0;

	(void)state;
	/* 2NN: 3 x 796,840 + 471,000 + 8 MiB = 11,250,128 bytes. */
	assert_true(sim_device_fits(&d, 796840, 471000, &need));
	assert_int_equal(need, 3 * 796840 + 471000 + 8388608);
	/* The CNN (6,653,480 bytes) does not fit in 16 MiB. */
	d.mem_bytes = 16u << 20;
	assert_false(sim_device_fits(&d, 6653480, 471000, &need));
	assert_int_equal(need, 3 * 6653480 + 471000 + 8388608);
}

static void
test_builtins(void **state)
{
	static const char *names[] = {"pi-zero-2w", "pi4", "pi5", "laptop", "phone-low",
	                              "phone-high"};
	sim_device_set set;

	(void)state;
	sim_device_set_builtins(&set);
	assert_int_equal(set.n, 6);
	for (size_t i = 0; i < 6; i++) {
		const sim_device *d = sim_device_find(&set, names[i]);
		assert_non_null(d);
		assert_true(d->flops > 0 && d->up_Bps > 0 && d->down_Bps > 0 && d->mem_bytes > 0);
		assert_true(d->on_s > 0 && d->off_s >= 0 && d->fail_p >= 0 && d->fail_p <= 1);
	}
	assert_null(sim_device_find(&set, "pi3"));
	/* Ordered as the hardware is: a Pi 5 trains faster than a Pi 4, which
	 * trains faster than a Pi Zero 2 W. */
	assert_true(sim_device_find(&set, "pi5")->flops > sim_device_find(&set, "pi4")->flops);
	assert_true(sim_device_find(&set, "pi4")->flops >
	            sim_device_find(&set, "pi-zero-2w")->flops);
}

static char tmp_dir[] = "/tmp/shoal_device_XXXXXX";

static const char *
write_tmp(const char *name, const char *text)
{
	static char path[256];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
	f = fopen(path, "w");
	assert_non_null(f);
	assert_true(fputs(text, f) >= 0);
	fclose(f);
	return path;
}

static void
test_profile_file(void **state)
{
	sim_device_set set, before;
	const sim_device *d;

	(void)state;
	assert_non_null(mkdtemp(tmp_dir));
	sim_device_set_builtins(&set);
	assert_int_equal(sim_device_load_file(&set, write_tmp("good.json",
		"{ \"pi4-slow\": { \"base\": \"pi4\", \"up_mbps\": 2, \"fail\": 0.5 },\n"
		"  \"board-x\": { \"gflops\": 3, \"up_mbps\": 10, \"down_mbps\": 50, \"rtt_ms\": 40,\n"
		"               \"mem_mb\": 512, \"on_h\": 24, \"off_h\": 0, \"fail\": 0 },\n"
		"  \"pi4\": { \"base\": \"pi4\", \"gflops\": 9 } }\n")), SHOAL_OK);
	assert_int_equal(set.n, 8); /* pi4 replaced, two added */
	d = sim_device_find(&set, "pi4-slow");
	assert_non_null(d);
	assert_true(d->up_Bps == 250000.0);
	assert_true(d->fail_p == 0.5);
	assert_true(d->down_Bps == 12.5e6); /* from pi4 */
	d = sim_device_find(&set, "board-x");
	assert_true(d->flops == 3e9 && d->rtt_s == 0.04 && d->mem_bytes == 512u << 20);
	assert_true(d->off_s == 0.0 && d->on_s == 24 * 3600.0);
	assert_true(sim_device_find(&set, "pi4")->flops == 9e9);

	/* Every kind of bad file is refused and leaves the set alone. */
	before = set;
	assert_int_equal(sim_device_load_file(&set, "/nonexistent/devices.json"), SHOAL_EIO);
	assert_int_equal(sim_device_load_file(&set, write_tmp("a.json", "{ \"x\": ")),
	                 SHOAL_EFORMAT);
	assert_int_equal(sim_device_load_file(&set, write_tmp("b.json", "[1, 2]")),
	                 SHOAL_EFORMAT);
	assert_int_equal(sim_device_load_file(&set, write_tmp("c.json",
		"{ \"x\": { \"base\": \"pi4\", \"gflop\": 1 } }")), SHOAL_EFORMAT); /* typo */
	assert_int_equal(sim_device_load_file(&set, write_tmp("d.json",
		"{ \"x\": { \"base\": \"pi4\", \"gflops\": \"fast\" } }")), SHOAL_EFORMAT);
	assert_int_equal(sim_device_load_file(&set, write_tmp("e.json",
		"{ \"x\": { \"gflops\": 1 } }")), SHOAL_EFORMAT); /* missing keys */
	assert_int_equal(sim_device_load_file(&set, write_tmp("f.json",
		"{ \"x\": { \"base\": \"pi9\" } }")), SHOAL_EFORMAT);
	assert_int_equal(sim_device_load_file(&set, write_tmp("g.json",
		"{ \"ok\": { \"base\": \"pi4\" }, \"x\": { \"base\": \"pi4\", \"fail\": 1.5 } }")),
		SHOAL_EINVAL);
	assert_int_equal(sim_device_load_file(&set, write_tmp("h.json",
		"{ \"x\": { \"base\": \"pi4\", \"gflops\": 0 } }")), SHOAL_EINVAL);
	assert_int_equal(sim_device_load_file(&set, write_tmp("i.json",
		"{ \"Bad Name\": { \"base\": \"pi4\" } }")), SHOAL_EINVAL);
	assert_int_equal(sim_device_load_file(&set, write_tmp("j.json",
		"{ \"x\": { \"base\": \"pi4\" }, \"x\": { \"base\": \"pi5\" } }")), SHOAL_EFORMAT);
	assert_memory_equal(&set, &before, sizeof set);
	{
		char big[8192] = "{";
		for (int i = 0; i < 30; i++)
			snprintf(big + strlen(big), sizeof big - strlen(big), "%s\"p%d\": {\"base\": \"pi4\"}",
			         i ? "," : "", i);
		strcat(big, "}");
		assert_int_equal(sim_device_load_file(&set, write_tmp("k.json", big)), SHOAL_ETOOBIG);
		assert_memory_equal(&set, &before, sizeof set);
	}
	for (const char *n = "good.json\0a.json\0b.json\0c.json\0d.json\0e.json\0f.json\0g.json\0"
	                     "h.json\0i.json\0j.json\0k.json\0"; *n; n += strlen(n) + 1) {
		char path[256];
		snprintf(path, sizeof path, "%s/%s", tmp_dir, n);
		unlink(path);
	}
	rmdir(tmp_dir);
}

static void
test_mix(void **state)
{
	sim_device_set set;
	sim_mix mix;
	uint8_t a[1000], b[1000], c[1000];
	uint32_t count[3] = {0};
	size_t same = 0;

	(void)state;
	sim_device_set_builtins(&set);
	assert_int_equal(sim_mix_parse(&set, "pi4:0.5,laptop:0.2,phone-low:0.3", &mix), SHOAL_OK);
	assert_int_equal(mix.n, 3);
	assert_string_equal(set.dev[mix.dev[1]].name, "laptop");
	assert_int_equal(sim_mix_assign(&mix, 7, 1000, a), SHOAL_OK);
	for (size_t i = 0; i < 1000; i++)
		count[a[i]]++;
	assert_int_equal(count[0], 500);
	assert_int_equal(count[1], 200);
	assert_int_equal(count[2], 300);
	/* Same seed, same classes; another seed, another spread. */
	assert_int_equal(sim_mix_assign(&mix, 7, 1000, b), SHOAL_OK);
	assert_memory_equal(a, b, sizeof a);
	assert_int_equal(sim_mix_assign(&mix, 8, 1000, c), SHOAL_OK);
	for (size_t i = 0; i < 1000; i++)
		same += a[i] == c[i];
	assert_true(same < 700); /* 38% expected by chance */
	/* Largest remainders: 7 clients at 0.5/0.2/0.3 -> 3.5, 1.4, 2.1 -> 4, 1, 2. */
	memset(count, 0, sizeof count);
	assert_int_equal(sim_mix_assign(&mix, 1, 7, a), SHOAL_OK);
	for (size_t i = 0; i < 7; i++)
		count[a[i]]++;
	assert_int_equal(count[0], 4);
	assert_int_equal(count[1], 1);
	assert_int_equal(count[2], 2);

	assert_int_equal(sim_mix_parse(&set, "pi5", &mix), SHOAL_OK);
	assert_int_equal(mix.n, 1);
	assert_true(mix.frac[0] == 1.0);
	assert_int_equal(sim_mix_parse(&set, "pi4:0.5,laptop:0.4", &mix), SHOAL_EINVAL);
	assert_int_equal(sim_mix_parse(&set, "pi4:0.5,pi4:0.5", &mix), SHOAL_EINVAL);
	assert_int_equal(sim_mix_parse(&set, "pi4:0.5,toaster:0.5", &mix), SHOAL_EINVAL);
	assert_int_equal(sim_mix_parse(&set, "pi4:x", &mix), SHOAL_EINVAL);
	assert_int_equal(sim_mix_parse(&set, "pi4:0,laptop:1", &mix), SHOAL_EINVAL);
	assert_int_equal(sim_mix_parse(&set, "pi4,laptop", &mix), SHOAL_EINVAL);
	assert_int_equal(sim_mix_parse(&set, "", &mix), SHOAL_EINVAL);
}

/* Availability against its configured rates: the fraction of clients
 * available at a moment is on/(on+off), and the periods have the
 * configured mean lengths; both within 4.5 standard errors. */
static void
test_availability_rates(void **state)
{
	enum { N = 4000 };
	sim_device d = plain_device(); /* on 1 h, off 0.5 h: 2/3 available */
	sim_avail *a = calloc(N, sizeof *a);
	double p = 2.0 / 3.0, on_sum = 0, off_sum = 0;
	uint32_t on_n = 0, off_n = 0, avail;

	(void)state;
	assert_non_null(a);
	assert_int_equal(sizeof *a, 16);
	for (int moment = 0; moment < 3; moment++) {
		double t = moment * 1e5; /* far apart: nearly independent */
		avail = 0;
		for (uint32_t c = 0; c < N; c++) {
			if (moment == 0)
				sim_avail_init(&a[c], &d, 42, c);
			avail += sim_avail_at(&a[c], &d, 42, c, t);
		}
		assert_true(fabs(avail / (double)N - p) < 4.5 * sqrt(p * (1 - p) / N));
	}
	/* Whole periods of one client over a long time: mean lengths. */
	{
		sim_avail x;
		double t = 0.0, start;
		bool on;

		sim_avail_init(&x, &d, 9, 3);
		on = sim_avail_at(&x, &d, 9, 3, 0.0);
		t = sim_avail_until(&x); /* skip the first, partial period */
		on = sim_avail_at(&x, &d, 9, 3, t);
		while (on_n + off_n < 20000) {
			start = t;
			t = sim_avail_until(&x);
			if (on) {
				on_sum += t - start;
				on_n++;
			} else {
				off_sum += t - start;
				off_n++;
			}
			assert_true(sim_avail_at(&x, &d, 9, 3, t) != on);
			on = !on;
		}
		/* An exponential's standard error is mean / sqrt(n). */
		assert_true(fabs(on_sum / on_n - 3600) < 4.5 * 3600 / sqrt(on_n));
		assert_true(fabs(off_sum / off_n - 1800) < 4.5 * 1800 / sqrt(off_n));
	}
	/* Always on when off_s is 0. */
	d.off_s = 0.0;
	sim_avail_init(&a[0], &d, 1, 1);
	assert_true(sim_avail_at(&a[0], &d, 1, 1, 1e12));
	free(a);
}

static void
test_failure_rate(void **state)
{
	enum { N = 100000 };
	sim_device d = plain_device(); /* fail_p 0.1 */
	uint32_t fails = 0, early = 0;
	double at, again;

	(void)state;
	for (uint32_t c = 0; c < N; c++) {
		if (sim_device_fails(&d, 5, c, 17, 0, &at)) {
			fails++;
			assert_true(at >= 0.0 && at < 1.0);
			early += at < 0.5;
			/* The same question gets the same answer. */
			assert_true(sim_device_fails(&d, 5, c, 17, 0, &again));
			assert_true(again == at);
		} else {
			assert_true(at == 1.0);
		}
	}
	assert_true(fabs(fails / (double)N - 0.1) < 4.5 * sqrt(0.1 * 0.9 / N));
	assert_true(fabs(early / (double)fails - 0.5) < 4.5 * sqrt(0.25 / fails));
	/* A second training in the same round (asynchronous rounds) draws
	 * anew: at the same rate, and independently of the first. */
	uint32_t second = 0, both = 0;
	for (uint32_t c = 0; c < N; c++) {
		bool f0 = sim_device_fails(&d, 5, c, 17, 0, NULL);
		bool f1 = sim_device_fails(&d, 5, c, 17, 1, NULL);
		second += f1;
		both += f0 && f1;
	}
	assert_true(fabs(second / (double)N - 0.1) < 4.5 * sqrt(0.1 * 0.9 / N));
	assert_true(fabs(both / (double)N - 0.01) < 4.5 * sqrt(0.01 * 0.99 / N));
	d.fail_p = 0.0;
	for (uint32_t c = 0; c < 1000; c++)
		assert_false(sim_device_fails(&d, 5, c, 1, c % 3, NULL));
	d.fail_p = 1.0;
	for (uint32_t c = 0; c < 1000; c++)
		assert_true(sim_device_fails(&d, 5, c, 1, c % 3, NULL));
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(test_round_time_by_hand),
	cmocka_unit_test(test_steps_in_budget),
	cmocka_unit_test(test_memory_fit),
	cmocka_unit_test(test_builtins),
	cmocka_unit_test(test_profile_file),
	cmocka_unit_test(test_mix),
	cmocka_unit_test(test_availability_rates),
	cmocka_unit_test(test_failure_rate),
};

SHOAL_TEST_MAIN(tests)
