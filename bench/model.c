/*
 * bench/model.c — a model of rdmamig's pre-copy migration: from guest RAM
 * size, dirty rate, working set, link bandwidth and the downtime limit it
 * predicts the number of iterations, the total time and the downtime.
 *
 * It does not re-implement the convergence policy: after every simulated
 * iteration it asks migration/policy.c (rm_policy_decide) what the engine
 * would do — switch over, iterate again, or throttle — so the model follows
 * the engine's rules by construction.  What it models is everything around
 * that policy:
 *
 *  - the link moves `bw` bytes/s (the bulk-phase goodput);
 *  - the bulk pass sends all non-zero RAM (`--first-pass`, default all RAM);
 *  - the guest writes `rate` bytes/s of pages, a share `hot-share` of them
 *    uniformly at random into a working set of `wss` bytes and the rest
 *    uniformly into the other pages (the built-in guest's hotset workload;
 *    uniform is wss = RAM).  Pages dirtied during an iteration of length t
 *    are then the distinct pages hit: W * (1 - exp(-writes_W / W)) per class;
 *  - a throttle of p% slows the writes to (100 - p)%;
 *  - the bulk pass reads all RAM looking for zero pages (`scan-bw`);
 *  - every pre-copy pass after the first costs `iter-overhead` on top of
 *    sending: dirty sync, fence, completion latency (on the first it is
 *    part of the scan);
 *  - downtime = `fixed-downtime` (pause, final sync, state, resume, and the
 *    final pass's latency: calibrated) + what is still dirty / final-bw (the
 *    link with the guest paused: where guest and transport share CPUs, as
 *    on the test bed, it moves faster than while the guest runs; default bw);
 *  - setup = `setup` (fixed: connect, authenticate, create the VM) + RAM in
 *    GiB x (`pop` + `reg`): the destination populating its RAM (first touch
 *    of fresh memory) and registering it (pinning, the NIC's page tables),
 *    both in seconds per GiB, measured (see DEF_POP_S_PER_GIB).  A share
 *    `overlap` of the per-GiB part runs beside the bulk pass (population
 *    and registration ahead of the sender): the bulk pass then lasts at
 *    least that long, and only the rest of the setup comes before the first
 *    byte.  overlap 0 is a destination that prepares all RAM first.
 *
 *   model sim   --ram 64M --bw 12M --rate 6M [--wss 3M --hot-share 0.9] ...
 *   model sweep --ram 64M --bw 12M --rate-max 20M [--steps 40] ...
 *   model table [--bw 11.5G] ...       the 100GbE table, 16–512 GiB, with setup
 *   model invert --ram 64M --dirty B --secs S [--wss ...]   write rate
 *               that dirties B distinct bytes in S seconds (calibration)
 *
 * Sizes take K/M/G/T suffixes (powers of two); rates are bytes/s.
 */
#include <getopt.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migration/policy.h"
#include "rdmamig.h"

#define PAGE 4096.0
#define GIB 1073741824.0

/*
 * Setup per GiB of guest RAM, measured (bench/README.md, "Setup in the
 * model"): the first write to fresh anonymous 4 KiB pages on the kvm-pvm
 * development host under the load of other test VMs (`bench-transport pop`,
 * median of 3 runs: 4.8 s/GiB), and registering populated 4 KiB pages on rxe
 * in the test bed (`bench-transport reg`, median of 5 runs: 265 ms/GiB, range
 * 58-412, in bench/results/20261126-0225-vm-softroce-vm and -0253-).  An
 * unloaded server touches
 * fresh memory many times faster and a real NIC registers at its own cost:
 * pass --pop and --reg measured where the migration runs.
 */
#define DEF_POP_S_PER_GIB 4.8
#define DEF_REG_S_PER_GIB 0.265

struct model_in {
	double ram, first_pass;		/* bytes */
	double bw, rate;		/* bytes/s */
	double final_bw;		/* bytes/s with the guest paused; 0: bw */
	double scan_bw;			/* bytes of RAM the bulk pass reads for zero
					 * pages per second; 0: free */
	double wss, hot_share;
	double setup_s, fixed_downtime_s, iter_overhead_s;
	double pop_s_per_gib, reg_s_per_gib;	/* destination setup per GiB of RAM */
	double overlap;			/* share of that beside the bulk pass, 0..1 */
	struct rdmamig_opts opts;	/* downtime, iterations, deadline, autoconverge */
};

struct model_iter {
	double sent, secs, dirty;	/* bytes, s, bytes dirty after it */
	unsigned throttle;
};

struct model_out {
	enum rdmamig_switchover why;
	unsigned iterations;
	double total_s, downtime_s, bytes, final_bytes;
	double setup_s;			/* before the first byte moves */
	unsigned throttle;
	struct model_iter it[RDMAMIG_MAX_ITER_STATS];
};

/* Distinct bytes dirtied by `rate` bytes/s of page writes over t seconds. */
static double dirtied(const struct model_in *m, double rate, double t)
{
	double hot = m->wss > m->ram ? m->ram : m->wss, cold = m->ram - hot;
	double share = hot >= m->ram ? 1.0 : m->hot_share;
	double d = 0;

	if (hot > 0)
		d += hot * -expm1(-rate * share * t / hot);
	if (cold > 0)
		d += cold * -expm1(-rate * (1 - share) * t / cold);
	return d;
}

static void simulate(const struct model_in *m, struct model_out *o)
{
	struct rm_policy pol;
	struct rm_policy_state st = { 0 };
	double per_gib = m->ram / GIB * (m->pop_s_per_gib + m->reg_s_per_gib);
	double beside = per_gib * m->overlap;	/* runs beside the bulk pass */
	double elapsed, pending = m->first_pass > 0 ? m->first_pass : m->ram;

	memset(o, 0, sizeof(*o));
	o->setup_s = elapsed = m->setup_s + per_gib - beside;
	rm_policy_from_opts(&pol, &m->opts);
	for (unsigned i = 0; i < RDMAMIG_MAX_ITER_STATS; i++) {
		double rate = m->rate * (100 - st.throttle) / 100.0;
		double secs = pending / m->bw +
			      (i == 0 ? (m->scan_bw > 0 ? m->ram / m->scan_bw : 0) : m->iter_overhead_s);
		double dirty;

		/* The sender never outruns the destination's preparation. */
		if (i == 0 && secs < beside)
			secs = beside;
		dirty = dirtied(m, rate, secs);
		struct rm_policy_input in = {
			.iteration = i,
			.sent_bytes = (uint64_t)pending,
			.duration_ns = (uint64_t)(secs * 1e9),
			.remaining_bytes = (uint64_t)dirty,
			.elapsed_ns = (uint64_t)((elapsed + secs) * 1e9),
		};

		o->it[i] = (struct model_iter){ pending, secs, dirty, st.throttle };
		o->iterations = i + 1;
		o->bytes += pending;
		elapsed += secs;
		o->why = rm_policy_decide(&pol, &st, &in);
		pending = dirty;
		if (o->why != RDMAMIG_SWITCH_NONE)
			break;
	}
	o->throttle = st.throttle;
	o->final_bytes = pending;
	o->bytes += pending;
	o->downtime_s = m->fixed_downtime_s + pending / (m->final_bw > 0 ? m->final_bw : m->bw);
	o->total_s = elapsed + o->downtime_s;
}

/* The write rate that dirties `dirty` distinct bytes in `secs` (bisection;
 * dirtied() is monotonic in the rate).  Negative when not reachable. */
static double invert(const struct model_in *m, double dirty, double secs)
{
	double lo = 0, hi = 1e3;

	if (dirty <= 0 || secs <= 0)
		return 0;
	if (dirty >= m->ram * 0.999)
		return -1;
	while (dirtied(m, hi, secs) < dirty && hi < 1e15)
		hi *= 2;
	for (int k = 0; k < 200; k++) {
		double mid = (lo + hi) / 2;

		if (dirtied(m, mid, secs) < dirty)
			lo = mid;
		else
			hi = mid;
	}
	return (lo + hi) / 2;
}

static const char *why_name(enum rdmamig_switchover w)
{
	static const char *const n[] = { "none", "converged", "max-iterations", "deadline" };

	return n[w & 3];
}

static double parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	switch (*end) {
	case 'k': case 'K': v *= 1024; end++; break;
	case 'm': case 'M': v *= 1048576; end++; break;
	case 'g': case 'G': v *= 1073741824.0; end++; break;
	case 't': case 'T': v *= 1099511627776.0; end++; break;
	}
	if (end == s || (*end && strcmp(end, "B") && strcmp(end, "iB") && strcmp(end, "/s"))) {
		fprintf(stderr, "model: '%s' is not a size\n", s);
		exit(2);
	}
	return v;
}

static void usage(void)
{
	fputs("usage: model sim|sweep|table|invert [options]\n"
	      "  --ram SIZE --bw RATE --rate RATE --wss SIZE --hot-share F --first-pass SIZE\n"
	      "  --downtime MS --max-iterations N --deadline S --autoconverge\n"
	      "  --setup S --fixed-downtime MS --iter-overhead MS --final-bw RATE\n"
	      "  --pop S_PER_GIB --reg S_PER_GIB --overlap F (destination setup; defaults measured)\n"
	      "  --scan-bw RATE (bulk pass zero-page scan)\n"
	      "  sweep: --rate-max RATE --steps N;  invert: --dirty SIZE --secs S\n"
	      "  --trace (sim: one line per iteration)\n", stderr);
	exit(2);
}

static void print_sim(const struct model_in *m, const struct model_out *o, bool trace)
{
	if (trace)
		for (unsigned i = 0; i < o->iterations; i++)
			printf("iter=%u sent=%.0f secs=%.4f dirty=%.0f throttle=%u\n", i, o->it[i].sent,
			       o->it[i].secs, o->it[i].dirty, o->it[i].throttle);
	printf("switchover=%s iterations=%u total_s=%.3f setup_s=%.3f downtime_ms=%.1f bytes=%.0f "
	       "final_bytes=%.0f throttle=%u rate=%.0f bw=%.0f\n", why_name(o->why), o->iterations,
	       o->total_s, o->setup_s, o->downtime_s * 1e3, o->bytes, o->final_bytes, o->throttle, m->rate,
	       m->bw);
}

static void fmt_time(char *buf, size_t n, double s)
{
	if (s < 60)
		snprintf(buf, n, "%.1f s", s);
	else if (s < 3600)
		snprintf(buf, n, "%.1f min", s / 60);
	else
		snprintf(buf, n, "%.1f h", s / 3600);
}

/* The 100GbE table: which guests converge under the default policy, what
 * autoconverge buys where they don't, and what setup adds to the total. */
static void table(struct model_in m)
{
	static const double gib[] = { 16, 32, 64, 128, 256, 512 };
	static const double rates[] = { 0.1, 0.5, 1, 2, 4, 8, 12, 16 };	/* GB/s */
	struct model_in ac = m;
	double wss = m.wss;

	ac.opts.autoconverge = 1;
	printf("Predicted, link %.2f GB/s, downtime limit %u ms, max %u iterations, fixed downtime %.0f ms,\n"
	       "writes uniform over %s; autoconverge column: throttle %u%% +%u%% after 2 slow rounds;\n"
	       "setup %.2f s + %.2f s/GiB populating + %.2f s/GiB registering, %.0f%% of it beside the bulk pass\n"
	       "(totals include setup; `setup` is the time before the first byte moves)\n",
	       m.bw / 1e9, m.opts.downtime_ms ? m.opts.downtime_ms : 300,
	       m.opts.max_iterations ? m.opts.max_iterations : 30, m.fixed_downtime_s * 1e3,
	       wss > 0 ? "the working set" : "all RAM", m.opts.throttle_initial ? m.opts.throttle_initial : 20,
	       m.opts.throttle_step ? m.opts.throttle_step : 10, m.setup_s, m.pop_s_per_gib, m.reg_s_per_gib,
	       m.overlap * 100);

	/* What setup costs a guest that barely writes, prepared first or beside. */
	printf("\n%8s %12s %12s %12s | %-27s\n", "RAM", "populate", "register", "bulk alone",
	       "total, setup first / beside");
	for (unsigned g = 0; g < sizeof(gib) / sizeof(gib[0]); g++) {
		struct model_in a = m, b = m;
		struct model_out o1, o2;
		char t1[32], t2[32], t3[32];

		a.ram = b.ram = gib[g] * GIB;
		a.wss = b.wss = a.ram;
		a.first_pass = b.first_pass = 0;
		a.rate = b.rate = 0;
		a.overlap = 0;
		b.overlap = 1;
		simulate(&a, &o1);
		simulate(&b, &o2);
		fmt_time(t1, sizeof(t1), o1.total_s);
		fmt_time(t2, sizeof(t2), o2.total_s);
		fmt_time(t3, sizeof(t3), a.ram / a.bw);
		printf("%4.0f GiB %10.1f s %10.1f s %12s | %12s / %s\n", gib[g], gib[g] * m.pop_s_per_gib,
		       gib[g] * m.reg_s_per_gib, t3, t1, t2);
	}

	printf("\n%8s %9s %8s | %-14s %5s %10s %11s | %-14s %5s %10s %11s %5s\n", "RAM", "dirty", "setup",
	       "default", "iters", "total", "downtime", "autoconverge", "iters", "total", "downtime", "thr%");
	for (unsigned g = 0; g < sizeof(gib) / sizeof(gib[0]); g++) {
		for (unsigned r = 0; r < sizeof(rates) / sizeof(rates[0]); r++) {
			struct model_out o1, o2;
			char t1[32], t2[32], t0[32];

			m.ram = ac.ram = gib[g] * GIB;
			m.first_pass = ac.first_pass = 0;
			m.wss = ac.wss = wss > 0 ? wss : m.ram;
			m.rate = ac.rate = rates[r] * 1e9;
			simulate(&m, &o1);
			simulate(&ac, &o2);
			fmt_time(t0, sizeof(t0), o1.setup_s);
			fmt_time(t1, sizeof(t1), o1.total_s);
			fmt_time(t2, sizeof(t2), o2.total_s);
			printf("%4.0f GiB %5.1f GB/s %8s | %-14s %5u %10s %9.0f ms | %-14s %5u %10s %9.0f ms %5u\n",
			       gib[g], rates[r], t0, why_name(o1.why), o1.iterations, t1, o1.downtime_s * 1e3,
			       why_name(o2.why), o2.iterations, t2, o2.downtime_s * 1e3, o2.throttle);
		}
	}
}

int main(int argc, char **argv)
{
	enum { O_RAM = 256, O_BW, O_RATE, O_WSS, O_HOT, O_FIRST, O_DOWNTIME, O_MAXIT, O_DEADLINE, O_AC,
	       O_SETUP, O_FIXED, O_ITEROVH, O_RATEMAX, O_STEPS, O_DIRTY, O_SECS, O_TRACE, O_FINALBW, O_SCANBW,
	       O_POP, O_REG, O_OVERLAP };
	static const struct option lo[] = {
		{ "ram", required_argument, NULL, O_RAM }, { "bw", required_argument, NULL, O_BW },
		{ "rate", required_argument, NULL, O_RATE }, { "wss", required_argument, NULL, O_WSS },
		{ "hot-share", required_argument, NULL, O_HOT },
		{ "first-pass", required_argument, NULL, O_FIRST },
		{ "downtime", required_argument, NULL, O_DOWNTIME },
		{ "max-iterations", required_argument, NULL, O_MAXIT },
		{ "deadline", required_argument, NULL, O_DEADLINE },
		{ "autoconverge", no_argument, NULL, O_AC }, { "setup", required_argument, NULL, O_SETUP },
		{ "fixed-downtime", required_argument, NULL, O_FIXED },
		{ "iter-overhead", required_argument, NULL, O_ITEROVH },
		{ "rate-max", required_argument, NULL, O_RATEMAX },
		{ "steps", required_argument, NULL, O_STEPS }, { "dirty", required_argument, NULL, O_DIRTY },
		{ "secs", required_argument, NULL, O_SECS }, { "trace", no_argument, NULL, O_TRACE },
		{ "final-bw", required_argument, NULL, O_FINALBW },
		{ "scan-bw", required_argument, NULL, O_SCANBW },
		{ "pop", required_argument, NULL, O_POP }, { "reg", required_argument, NULL, O_REG },
		{ "overlap", required_argument, NULL, O_OVERLAP },
		{ 0 },
	};
	struct model_in m = { .ram = 64 * 1048576.0, .bw = 11.5e9, .hot_share = 0.9,
			      .fixed_downtime_s = 0.05, .pop_s_per_gib = -1, .reg_s_per_gib = -1 };
	double rate_max = 0, dirty = 0, secs = 0;
	unsigned steps = 40;
	bool trace = false;
	const char *cmd;
	int opt;

	if (argc < 2)
		usage();
	cmd = argv[1];
	optind = 2;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case O_RAM: m.ram = parse_size(optarg); break;
		case O_BW: m.bw = parse_size(optarg); break;
		case O_RATE: m.rate = parse_size(optarg); break;
		case O_WSS: m.wss = parse_size(optarg); break;
		case O_HOT: m.hot_share = atof(optarg); break;
		case O_FIRST: m.first_pass = parse_size(optarg); break;
		case O_DOWNTIME: m.opts.downtime_ms = (unsigned)atoi(optarg); break;
		case O_MAXIT: m.opts.max_iterations = (unsigned)atoi(optarg); break;
		case O_DEADLINE: m.opts.deadline_ms = (uint64_t)(atof(optarg) * 1000); break;
		case O_AC: m.opts.autoconverge = 1; break;
		case O_SETUP: m.setup_s = atof(optarg); break;
		case O_FIXED: m.fixed_downtime_s = atof(optarg) / 1e3; break;
		case O_ITEROVH: m.iter_overhead_s = atof(optarg) / 1e3; break;
		case O_RATEMAX: rate_max = parse_size(optarg); break;
		case O_STEPS: steps = (unsigned)atoi(optarg); break;
		case O_DIRTY: dirty = parse_size(optarg); break;
		case O_SECS: secs = atof(optarg); break;
		case O_TRACE: trace = true; break;
		case O_FINALBW: m.final_bw = parse_size(optarg); break;
		case O_SCANBW: m.scan_bw = parse_size(optarg); break;
		case O_POP: m.pop_s_per_gib = atof(optarg); break;
		case O_REG: m.reg_s_per_gib = atof(optarg); break;
		case O_OVERLAP: m.overlap = atof(optarg); break;
		default: usage();
		}
	}
	if (m.bw <= 0 || m.ram <= 0 || steps == 0 || m.overlap < 0 || m.overlap > 1)
		usage();
	/* The table predicts whole migrations, so its setup defaults to the
	 * measured figures; sim and sweep add only what they are given (the
	 * harness passes each run's own measured setup as --setup). */
	if (m.pop_s_per_gib < 0)
		m.pop_s_per_gib = strcmp(cmd, "table") ? 0 : DEF_POP_S_PER_GIB;
	if (m.reg_s_per_gib < 0)
		m.reg_s_per_gib = strcmp(cmd, "table") ? 0 : DEF_REG_S_PER_GIB;

	if (!strcmp(cmd, "table")) {
		table(m);
	} else {
		if (m.wss <= 0 || m.wss > m.ram)
			m.wss = m.ram;
		if (!strcmp(cmd, "sim")) {
			struct model_out o;

			simulate(&m, &o);
			print_sim(&m, &o, trace);
		} else if (!strcmp(cmd, "sweep")) {
			printf("# rate_Bps iterations total_s downtime_ms switchover\n");
			for (unsigned k = 0; k <= steps; k++) {
				struct model_out o;

				m.rate = rate_max * k / steps;
				simulate(&m, &o);
				printf("%.0f %u %.3f %.1f %s\n", m.rate, o.iterations, o.total_s,
				       o.downtime_s * 1e3, why_name(o.why));
			}
		} else if (!strcmp(cmd, "invert")) {
			printf("rate=%.0f\n", invert(&m, dirty, secs));
		} else {
			usage();
		}
	}
	return 0;
}
