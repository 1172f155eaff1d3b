/*
 * cli/main.c — `rdmamig`, the operator's front end: flags, the built-in KVM
 * guest, progress on the terminal, JSON stats, SIGINT to cancel.  Migration
 * itself goes through include/rdmamig.h only; kvm/vmm.h is the built-in VMM.
 *
 * The guest lives in this process, so the source process is its keeper
 * after a migration too: a failed source runs its guest on (and says so,
 * with its progress) until --run-after passes or the operator ends it; a
 * source whose handover outcome is unknown keeps the guest paused and asks
 * the destination again (every RECOVER_RETRY_S, and at once on SIGUSR1,
 * which `rdmamig --recover PID` sends) until it is settled or ended.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cli/nic-node.h"
#include "kvm/vmm.h"
#include "rdmamig.h"

enum exit_code {
	EXIT_OK = 0,
	EXIT_FAILED = 1,	/* migration failed; the source guest runs on */
	EXIT_USAGE = 2,
	EXIT_REFUSED = 3,	/* the destination refused (mismatch) */
	EXIT_VERIFY = 4,	/* RAM digests differ */
	EXIT_CANCELLED = 5,	/* SIGINT / SIGTERM */
	EXIT_GUEST = 6,		/* the guest failed (setup, or integrity after migration) */
	EXIT_AUTH = 7,		/* the peer did not prove the pre-shared key */
	EXIT_INDOUBT = 8,	/* source: GO sent, outcome never learnt; the guest was
				 * kept paused until the operator ended the process */
};

#define RECOVER_RETRY_S 10	/* an in-doubt source asks again this often */

static const char usage_text[] =
"usage: rdmamig --dst --listen [ADDR:]PORT --psk FILE [options]\n"
"       rdmamig --src --connect ADDR:PORT --psk FILE [guest options] [options]\n"
"       rdmamig --recover PID\n"
"\n"
"Live-migrate a running KVM guest over RDMA (or TCP).  The destination waits\n"
"for one source, creates a VM of the source's shape, receives its RAM and\n"
"state, and runs it.  The source boots the built-in guest, lets it run, then\n"
"migrates it.  The handover is exactly-one-copy: until the source sends GO,\n"
"any failure leaves the source guest running (it runs on, reporting its\n"
"progress, for --run-after); after GO the source never resumes on its own.\n"
"If the answer to GO is lost, both sides keep the guest paused, the source\n"
"reconnects to ask the destination what it did (--recover-window), and then\n"
"exactly one side runs it.  If it cannot learn the outcome, the source keeps\n"
"the guest PAUSED, asks again every 10 s, and says so; `rdmamig --recover PID`\n"
"makes it ask at once.\n"
"\n"
"Guest (source; on a destination --mem/--vcpus create its VM up front, and a\n"
"source whose VM differs is refused):\n"
"  --mem SIZE            guest RAM (default 256M; K/M/G suffixes)\n"
"  --vcpus N             vCPUs, one thread each (default 2)\n"
"  --workload W[:RATE]   idle | uniform | hotset | sweep | stamp, RATE page\n"
"                        writes/s per vCPU (default uniform:2000; 0: flat out)\n"
"  --hot PERMILLE        hotset: share of pages that are hot (default 100)\n"
"  --backing B           anon | memfd | huge2m | huge1g (default anon)\n"
"  --numa NODE           put guest RAM on this NUMA node (default: prefer the\n"
"                        node of the NIC behind the address, where known)\n"
"  --thp                 ask for transparent huge pages for anon/memfd RAM:\n"
"                        registers 3.5x faster (rxe) and populates 3x faster\n"
"                        warm, but first touch of memory the host's hypervisor\n"
"                        reclaimed is 5x slower on kvm-pvm hosts\n"
"  --no-prefault         don't populate guest RAM up front (populating it keeps\n"
"                        RDMA registration from faulting in every page)\n"
"  --warmup SECS         run the guest this long before migrating (default 2)\n"
"\n"
"Security:\n"
"  --psk FILE            pre-shared key (16 to 64 bytes, e.g. from\n"
"                        head -c 32 /dev/urandom > FILE): both sides must\n"
"                        give the same; each proves it to the other before\n"
"                        the destination creates or registers anything\n"
"  --no-auth             run without a key: any host that reaches the port can\n"
"                        write the destination's guest RAM, and any host that\n"
"                        answers on its address receives the source's guest\n"
"  --tls                 TCP: TLS 1.3 on every connection, keyed from --psk;\n"
"                        both sides must give it.  Without it the TCP stream\n"
"                        (guest RAM and state) is authenticated, not encrypted\n"
"  --max-mem SIZE        destination: refuse a source whose guest RAM is larger\n"
"                        (default: the host's MemAvailable)\n"
"\n"
"Migration:\n"
"  --transport T         rdma | tcp (default rdma)\n"
"  --qps N               QPs / TCP connections (default 2)\n"
"  --max-write SIZE      largest single write (default 1M)\n"
"  --registration R      all | lazy | odp | upfront (default all): a destination\n"
"                        registers behind the transfer, chunk by chunk ahead\n"
"                        of the source, except with odp and upfront (all of\n"
"                        it before the first byte moves: to compare)\n"
"  --tracker T           bitmap | clear | ring (default clear)\n"
"  --downtime MS         switch over when the rest fits in MS (default 300)\n"
"  --max-iterations N    then switch over regardless (default 30)\n"
"  --deadline TIME       switch over by then, throttling as needed (e.g. 90s, 5m)\n"
"  --max-bandwidth RATE  cap RAM sending, bytes/s (e.g. 500M)\n"
"  --autoconverge        throttle vCPUs when iterations don't shrink\n"
"  --timeout MS          a peer silent this long is gone; also bounds connect\n"
"                        and accept, never a migration's length (default 20000)\n"
"  --verify              digest guest RAM on both sides at switchover\n"
"  --recover-window MS   after a lost handover answer, how long the source\n"
"                        reconnects to ask (default 30000); the destination\n"
"                        answers for twice as long\n"
"\n"
"Output:\n"
"  --json FILE           write the stats as JSON\n"
"  --run-after SECS      run the guest this long, reporting its progress, then\n"
"                        exit: the destination after a migration, the source\n"
"                        after a failure (default 3; 0: until SIGINT/SIGTERM)\n"
"\n"
"Recovery:\n"
"  --recover PID         ask the source process PID, whose guest waits PAUSED\n"
"                        for a lost handover answer, to ask its destination\n"
"                        now (SIGUSR1); its log says the outcome\n"
"  -q, --quiet           errors only     -v, --verbose   debug log\n"
"  -h, --help            this text       --version\n"
"\n"
"Examples:\n"
"  head -c 32 /dev/urandom > key    (copy it to both hosts)\n"
"  rdmamig --dst --listen 10.0.0.2:7471 --psk key\n"
"  rdmamig --src --connect 10.0.0.2:7471 --psk key --mem 4G --vcpus 4 --workload hotset:20000\n"
"  rdmamig --src --connect 10.0.0.2:7471 --psk key --transport tcp --deadline 5m --verify\n"
"\n"
"Exit codes: 0 migrated (the source's copy released); 1 failed (the source\n"
"guest ran on); 2 usage; 3 refused by the destination (the source guest ran\n"
"on); 4 RAM digests differ; 5 cancelled before GO (the source guest ran on);\n"
"6 guest failure; 7 the peer did not prove the pre-shared key; 8 the\n"
"outcome of the handover stayed unknown and the operator ended the source,\n"
"whose guest was PAUSED throughout (the destination may run it: check there\n"
"before starting it anywhere).\n";

struct cli {
	bool src, dst;
	char *addr, *port;
	uint64_t mem;
	unsigned vcpus;
	struct rm_kvm_workload wl;
	struct rm_backing_opts backing;
	enum rm_dirty_kind tracker;
	unsigned warmup_s, run_after_s;
	pid_t recover_pid;	/* --recover PID */
	bool shape_given;	/* --mem or --vcpus given */
	const char *json;
	const char *psk_file;
	unsigned char psk[RDMAMIG_PSK_MAX];
	int verbosity;		/* 0 quiet, 1 normal, 2 debug */
	struct rdmamig_opts opts;
};

static bool tty;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static bool progress_shown;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&out_lock);
	if (progress_shown && tty)
		fputs("\r\033[K", stderr);
	progress_shown = false;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&out_lock);
}

static void log_hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	const struct cli *c = opaque;
	static const char *const names[] = {
		[RDMAMIG_LOG_ERR] = "error", [RDMAMIG_LOG_WARN] = "warning",
		[RDMAMIG_LOG_INFO] = "info", [RDMAMIG_LOG_DEBUG] = "debug",
	};

	if (level == RDMAMIG_LOG_INFO && c->verbosity < 1)
		return;
	say("rdmamig: %s: %s\n", names[level] ? names[level] : "log", msg);
}

static void progress(void *opaque, const struct rdmamig_progress *p)
{
	const struct cli *c = opaque;
	static const char *const stage[] = { "setup", "iterate", "stop-and-copy", "done" };
	char line[256];

	static unsigned last_iter = ~0u;
	static int last_stage = -1;

	if (c->verbosity < 1)
		return;
	/* A log file gets one line per iteration and stage, a terminal all. */
	if (!tty && p->iteration == last_iter && p->stage == last_stage)
		return;
	last_iter = p->iteration;
	last_stage = p->stage;
	snprintf(line, sizeof(line),
		 "%s iter %u | sent %.1f MiB | remaining %.1f MiB | %.1f MB/s | dirty %.1f MB/s | "
		 "exp. downtime %llu ms | throttle %u%%",
		 stage[p->stage & 3], p->iteration, p->sent_bytes / 1048576.0,
		 p->remaining_bytes / 1048576.0, p->bandwidth / 1e6, p->dirty_rate / 1e6,
		 (unsigned long long)p->expected_downtime_ms, p->throttle);
	pthread_mutex_lock(&out_lock);
	if (tty) {
		fprintf(stderr, "\r\033[K%s", line);
		progress_shown = true;
	} else {
		fprintf(stderr, "progress: %s\n", line);
	}
	pthread_mutex_unlock(&out_lock);
}

/* "256M", "4G", "1048576" → bytes; 0 on error. */
static uint64_t parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	uint64_t mul = 1;

	if (end == s || v < 0)
		return 0;
	switch (*end) {
	case 'k': case 'K': mul = 1ull << 10; end++; break;
	case 'm': case 'M': mul = 1ull << 20; end++; break;
	case 'g': case 'G': mul = 1ull << 30; end++; break;
	case 't': case 'T': mul = 1ull << 40; end++; break;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	return *end ? 0 : (uint64_t)(v * (double)mul);
}

/* "90", "90s", "5m", "1h", "1500ms" → milliseconds; 0 on error. */
static uint64_t parse_duration_ms(const char *s)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || v <= 0)
		return 0;
	if (!strcmp(end, "ms"))
		return (uint64_t)v;
	if (!*end || !strcmp(end, "s"))
		return (uint64_t)(v * 1000);
	if (!strcmp(end, "m"))
		return (uint64_t)(v * 60000);
	if (!strcmp(end, "h"))
		return (uint64_t)(v * 3600000);
	return 0;
}

static int parse_uint(const char *s, unsigned *out)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);

	if (end == s || *end || v > 0xffffffffu)
		return -1;
	*out = (unsigned)v;
	return 0;
}

/* "[ADDR:]PORT", "[v6addr]:PORT" */
static int parse_endpoint(char *s, char **addr, char **port, bool need_addr)
{
	char *colon;

	if (s[0] == '[') {
		char *close = strchr(s, ']');

		if (!close || close[1] != ':')
			return -1;
		*close = '\0';
		*addr = s + 1;
		*port = close + 2;
		return 0;
	}
	colon = strrchr(s, ':');
	if (!colon) {
		if (need_addr)
			return -1;
		*addr = NULL;
		*port = s;
		return 0;
	}
	*colon = '\0';
	*addr = *s ? s : NULL;
	*port = colon + 1;
	return need_addr && !*addr ? -1 : 0;
}

static void read_psk(struct cli *c);

#define USAGE_ERR(...) do { fprintf(stderr, "rdmamig: " __VA_ARGS__); \
	fprintf(stderr, "\nTry 'rdmamig --help'.\n"); exit(EXIT_USAGE); } while (0)

static void parse_args(struct cli *c, int argc, char **argv)
{
	enum {
		O_SRC = 256, O_DST, O_LISTEN, O_CONNECT, O_MEM, O_VCPUS, O_WORKLOAD, O_HOT, O_BACKING,
		O_NUMA, O_WARMUP, O_TRANSPORT, O_QPS, O_MAXWRITE, O_REG, O_TRACKER, O_DOWNTIME,
		O_MAXITER, O_DEADLINE, O_MAXBW, O_AUTOCONV, O_TIMEOUT, O_VERIFY, O_JSON, O_RUNAFTER,
		O_VERSION, O_NOPREFAULT, O_PSK, O_NOAUTH, O_TLS, O_MAXMEM, O_RECOVER, O_RECOVERWIN,
		O_THP,
	};
	static const struct option longopts[] = {
		{ "src", no_argument, NULL, O_SRC },
		{ "dst", no_argument, NULL, O_DST },
		{ "listen", required_argument, NULL, O_LISTEN },
		{ "connect", required_argument, NULL, O_CONNECT },
		{ "mem", required_argument, NULL, O_MEM },
		{ "vcpus", required_argument, NULL, O_VCPUS },
		{ "workload", required_argument, NULL, O_WORKLOAD },
		{ "hot", required_argument, NULL, O_HOT },
		{ "backing", required_argument, NULL, O_BACKING },
		{ "numa", required_argument, NULL, O_NUMA },
		{ "warmup", required_argument, NULL, O_WARMUP },
		{ "no-prefault", no_argument, NULL, O_NOPREFAULT },
		{ "thp", no_argument, NULL, O_THP },
		{ "transport", required_argument, NULL, O_TRANSPORT },
		{ "qps", required_argument, NULL, O_QPS },
		{ "max-write", required_argument, NULL, O_MAXWRITE },
		{ "registration", required_argument, NULL, O_REG },
		{ "tracker", required_argument, NULL, O_TRACKER },
		{ "downtime", required_argument, NULL, O_DOWNTIME },
		{ "max-iterations", required_argument, NULL, O_MAXITER },
		{ "deadline", required_argument, NULL, O_DEADLINE },
		{ "max-bandwidth", required_argument, NULL, O_MAXBW },
		{ "autoconverge", no_argument, NULL, O_AUTOCONV },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "verify", no_argument, NULL, O_VERIFY },
		{ "json", required_argument, NULL, O_JSON },
		{ "psk", required_argument, NULL, O_PSK },
		{ "no-auth", no_argument, NULL, O_NOAUTH },
		{ "tls", no_argument, NULL, O_TLS },
		{ "max-mem", required_argument, NULL, O_MAXMEM },
		{ "run-after", required_argument, NULL, O_RUNAFTER },
		{ "recover", required_argument, NULL, O_RECOVER },
		{ "recover-window", required_argument, NULL, O_RECOVERWIN },
		{ "quiet", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, O_VERSION },
		{ 0 },
	};
	char *endpoint = NULL;
	int opt;

	while ((opt = getopt_long(argc, argv, "qvh", longopts, NULL)) != -1) {
		unsigned u;

		switch (opt) {
		case O_SRC: c->src = true; break;
		case O_DST: c->dst = true; break;
		case O_LISTEN: case O_CONNECT: endpoint = optarg; break;
		case O_MEM:
			c->shape_given = true;
			if (!(c->mem = parse_size(optarg)))
				USAGE_ERR("--mem %s: not a size (e.g. 256M, 4G)", optarg);
			break;
		case O_VCPUS:
			c->shape_given = true;
			if (parse_uint(optarg, &c->vcpus) || !c->vcpus || c->vcpus > RM_GUEST_MAX_VCPUS)
				USAGE_ERR("--vcpus %s: 1..%d", optarg, RM_GUEST_MAX_VCPUS);
			break;
		case O_WORKLOAD: {
			static const char *const names[] = { "idle", "uniform", "hotset", "sweep", "stamp" };
			char *rate = strchr(optarg, ':');
			unsigned i;

			if (rate)
				*rate++ = '\0';
			for (i = 0; i < 5 && strcmp(optarg, names[i]); i++)
				;
			if (i == 5)
				USAGE_ERR("--workload %s: one of idle, uniform, hotset, sweep, stamp", optarg);
			c->wl.kind = (enum rm_guest_workload)i;
			if (rate && parse_uint(rate, &u))
				USAGE_ERR("--workload %s:%s: RATE is page writes per second", optarg, rate);
			if (rate)
				c->wl.rate_pages_per_sec = u;
			break;
		}
		case O_HOT:
			if (parse_uint(optarg, &c->wl.hot_permille) || !c->wl.hot_permille ||
			    c->wl.hot_permille > 1000)
				USAGE_ERR("--hot %s: 1..1000", optarg);
			break;
		case O_BACKING:
			if (!strcmp(optarg, "anon")) c->backing.kind = RM_BACKING_ANON;
			else if (!strcmp(optarg, "memfd")) c->backing.kind = RM_BACKING_MEMFD;
			else if (!strcmp(optarg, "huge2m")) c->backing.kind = RM_BACKING_HUGE_2M;
			else if (!strcmp(optarg, "huge1g")) c->backing.kind = RM_BACKING_HUGE_1G;
			else USAGE_ERR("--backing %s: anon, memfd, huge2m or huge1g", optarg);
			break;
		case O_NUMA:
			if (parse_uint(optarg, &u))
				USAGE_ERR("--numa %s: a node number", optarg);
			c->backing.numa_node = (int)u;
			break;
		case O_NOPREFAULT: c->backing.prefault = false; break;
		case O_THP: c->backing.thp = true; break;
		case O_WARMUP:
			if (parse_uint(optarg, &c->warmup_s))
				USAGE_ERR("--warmup %s: seconds", optarg);
			break;
		case O_TRANSPORT:
			if (!strcmp(optarg, "rdma")) c->opts.transport = RDMAMIG_TRANSPORT_RDMA;
			else if (!strcmp(optarg, "tcp")) c->opts.transport = RDMAMIG_TRANSPORT_TCP;
			else USAGE_ERR("--transport %s: rdma or tcp", optarg);
			break;
		case O_QPS:
			if (parse_uint(optarg, &c->opts.channels) || !c->opts.channels || c->opts.channels > 16)
				USAGE_ERR("--qps %s: 1..16", optarg);
			break;
		case O_MAXWRITE: {
			uint64_t v = parse_size(optarg);

			if (v < 4096 || v > (64u << 20) || (v & (v - 1)))
				USAGE_ERR("--max-write %s: a power of two from 4K to 64M", optarg);
			c->opts.max_write = (uint32_t)v;
			break;
		}
		case O_REG:
			if (!strcmp(optarg, "all")) c->opts.registration = RDMAMIG_REG_ALL;
			else if (!strcmp(optarg, "lazy")) c->opts.registration = RDMAMIG_REG_LAZY;
			else if (!strcmp(optarg, "odp")) c->opts.registration = RDMAMIG_REG_ODP;
			else if (!strcmp(optarg, "upfront")) c->opts.registration = RDMAMIG_REG_UPFRONT;
			else USAGE_ERR("--registration %s: all, lazy, odp or upfront", optarg);
			break;
		case O_TRACKER:
			if (!strcmp(optarg, "bitmap")) c->tracker = RM_DIRTY_BITMAP;
			else if (!strcmp(optarg, "clear")) c->tracker = RM_DIRTY_CLEAR;
			else if (!strcmp(optarg, "ring")) c->tracker = RM_DIRTY_RING;
			else USAGE_ERR("--tracker %s: bitmap, clear or ring", optarg);
			break;
		case O_DOWNTIME:
			if (parse_uint(optarg, &c->opts.downtime_ms) || !c->opts.downtime_ms)
				USAGE_ERR("--downtime %s: milliseconds, at least 1", optarg);
			break;
		case O_MAXITER:
			if (parse_uint(optarg, &c->opts.max_iterations) || !c->opts.max_iterations)
				USAGE_ERR("--max-iterations %s: at least 1", optarg);
			break;
		case O_DEADLINE:
			if (!(c->opts.deadline_ms = parse_duration_ms(optarg)))
				USAGE_ERR("--deadline %s: a duration (e.g. 90s, 5m)", optarg);
			break;
		case O_MAXBW:
			if (!(c->opts.max_bandwidth = parse_size(optarg)))
				USAGE_ERR("--max-bandwidth %s: bytes per second (e.g. 500M)", optarg);
			break;
		case O_AUTOCONV: c->opts.autoconverge = 1; break;
		case O_TIMEOUT:
			if (parse_uint(optarg, &u) || u < 100)
				USAGE_ERR("--timeout %s: milliseconds, at least 100", optarg);
			c->opts.timeout_ms = (int)u;
			break;
		case O_VERIFY: c->opts.verify = 1; break;
		case O_JSON: c->json = optarg; break;
		case O_PSK: c->psk_file = optarg; break;
		case O_NOAUTH: c->opts.no_auth = 1; break;
		case O_TLS: c->opts.tls = 1; break;
		case O_MAXMEM:
			if (!(c->opts.max_mem = parse_size(optarg)))
				USAGE_ERR("--max-mem %s: a size (e.g. 8G)", optarg);
			break;
		case O_RUNAFTER:
			if (parse_uint(optarg, &c->run_after_s))
				USAGE_ERR("--run-after %s: seconds", optarg);
			break;
		case O_RECOVER:
			if (parse_uint(optarg, &u) || !u || u > INT_MAX)
				USAGE_ERR("--recover %s: the source's process id", optarg);
			c->recover_pid = (pid_t)u;
			break;
		case O_RECOVERWIN:
			if (parse_uint(optarg, &c->opts.recover_ms) || c->opts.recover_ms < 100)
				USAGE_ERR("--recover-window %s: milliseconds, at least 100", optarg);
			break;
		case 'q': c->verbosity = 0; break;
		case 'v': c->verbosity = 2; break;
		case 'h': fputs(usage_text, stdout); exit(EXIT_OK);
		case O_VERSION: printf("rdmamig %s\n", rdmamig_version()); exit(EXIT_OK);
		default: fprintf(stderr, "Try 'rdmamig --help'.\n"); exit(EXIT_USAGE);
		}
	}
	if (optind < argc)
		USAGE_ERR("unexpected argument '%s'", argv[optind]);
	if (c->recover_pid) {
		if (c->src || c->dst || endpoint)
			USAGE_ERR("--recover PID stands alone");
		return;
	}
	if (c->src == c->dst)
		USAGE_ERR("say --src or --dst (exactly one)");
	if (!endpoint)
		USAGE_ERR("%s", c->src ? "--src needs --connect ADDR:PORT" : "--dst needs --listen [ADDR:]PORT");
	if (parse_endpoint(endpoint, &c->addr, &c->port, c->src))
		USAGE_ERR("'%s': expected %s", endpoint, c->src ? "ADDR:PORT" : "[ADDR:]PORT");
	c->opts.role = c->src ? RDMAMIG_SOURCE : RDMAMIG_DESTINATION;
	c->opts.addr = c->addr;
	c->opts.port = c->port;
	if (c->psk_file && c->opts.no_auth)
		USAGE_ERR("--psk and --no-auth: give one");
	if (!c->psk_file && !c->opts.no_auth)
		USAGE_ERR("%s needs --psk FILE (the same key on both sides; make one with "
			  "'head -c 32 /dev/urandom > FILE'), or --no-auth to let %s",
			  c->src ? "--src" : "--dst",
			  c->src ? "any host that answers on the destination's address receive the guest"
				 : "any host that reaches the port write guest RAM");
	if (c->opts.tls && !c->psk_file)
		USAGE_ERR("--tls needs --psk FILE: TLS is keyed by a key derived from it");
	if (c->opts.tls && c->opts.transport != RDMAMIG_TRANSPORT_TCP)
		USAGE_ERR("--tls is for --transport tcp; RDMA traffic is not encrypted (the fabric is "
			  "assumed private: see the README's Security section)");
	if (c->psk_file)
		read_psk(c);
}

/* The key file's bytes, as they are (a trailing newline counts: both sides
 * read the same file). */
static void read_psk(struct cli *c)
{
	FILE *f = fopen(c->psk_file, "re");
	unsigned char extra;
	size_t n;

	if (!f)
		USAGE_ERR("--psk %s: %s", c->psk_file, strerror(errno));
	n = fread(c->psk, 1, sizeof(c->psk), f);
	if (n == sizeof(c->psk) && fread(&extra, 1, 1, f) == 1)
		n = sizeof(c->psk) + 1;
	fclose(f);
	if (n < RDMAMIG_PSK_MIN || n > RDMAMIG_PSK_MAX)
		USAGE_ERR("--psk %s: %zu%s bytes; a key is %d to %d bytes (head -c 32 /dev/urandom > FILE)",
			  c->psk_file, n > RDMAMIG_PSK_MAX ? (size_t)RDMAMIG_PSK_MAX : n,
			  n > RDMAMIG_PSK_MAX ? "+" : "", RDMAMIG_PSK_MIN, RDMAMIG_PSK_MAX);
	c->opts.psk = c->psk;
	c->opts.psk_len = n;
}

/* SIGINT/SIGTERM are blocked everywhere and taken here, off signal context. */
struct sigctx {
	rdmamig_t *m;
	volatile sig_atomic_t got;	/* SIGINT or SIGTERM */
	volatile sig_atomic_t recover;	/* SIGUSR1: ask the destination now */
	pthread_mutex_t lock;
};

static struct sigctx sigs = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *signal_thread(void *arg)
{
	sigset_t *set = arg;
	int sig;

	for (;;) {
		if (sigwait(set, &sig))
			continue;
		if (sig == SIGUSR1) {
			sigs.recover = 1;
			continue;
		}
		pthread_mutex_lock(&sigs.lock);
		sigs.got = sig;
		if (sigs.m)
			rdmamig_cancel(sigs.m);
		pthread_mutex_unlock(&sigs.lock);
		say("rdmamig: %s: cancelling\n", sig == SIGINT ? "interrupted" : "terminated");
	}
	return NULL;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000l };

	nanosleep(&ts, NULL);
}

/* pop: a destination's background population (NULL: none). */
static void write_json(const struct cli *c, int rc, const struct rdmamig_stats *s, struct rm_populator *pop)
{
	static const char *const sw[] = { "none", "converged", "max-iterations", "deadline" };
	FILE *f = fopen(c->json, "w");

	if (!f) {
		say("rdmamig: cannot write %s: %s\n", c->json, strerror(errno));
		return;
	}
	fprintf(f, "{\n  \"role\": \"%s\",\n  \"result\": %d,\n  \"error\": \"%s\",\n", c->src ? "source" : "destination",
		rc, rc ? rdmamig_strerror(rc) : "");
	fprintf(f, "  \"transport\": \"%s\",\n  \"channels\": %u,\n",
		c->opts.transport == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma", c->opts.channels ? c->opts.channels : 2);
	fprintf(f, "  \"switchover\": \"%s\",\n", sw[s->switchover & 3]);
#define J(name) fprintf(f, "  \"" #name "\": %llu,\n", (unsigned long long)s->name)
	J(ram_bytes); J(total_ns); J(setup_ns); J(registration_ns); J(downtime_ns); J(pause_ns); J(final_sync_ns);
	J(final_send_ns); J(state_ns); J(handover_ns); J(load_ns); J(go_ns); J(resume_ns); J(verify_ns);
	J(recover_ns); J(unaccounted_ns); J(recoveries); J(registration_bytes); J(registration_call_ns); J(registration_wait_ns); J(first_write_ns); J(bytes); J(pages); J(zero_pages_skipped); J(state_bytes);
#undef J
	{
		static const char *const tls[] = { "off", "userspace", "kernel-tx", "kernel" };

		fprintf(f, "  \"tls\": \"%s\",\n", tls[s->tls & 3]);
	}
	/* Per GiB registered, so that guests of any size compare. */
	fprintf(f, "  \"registration_ns_per_gib\": %llu,\n", s->registration_bytes ?
		(unsigned long long)((double)s->registration_call_ns * (1ull << 30) / s->registration_bytes) : 0ull);
	if (pop)
		fprintf(f, "  \"populate_bytes\": %llu,\n  \"populate_done\": %llu,\n  \"populate_ns\": %llu,\n",
			(unsigned long long)rm_populate_total(pop), (unsigned long long)rm_populate_done(pop),
			(unsigned long long)rm_populate_ns(pop));
	fprintf(f, "  \"verified\": %d,\n  \"digest\": \"%#llx\",\n  \"iterations\": [", s->verified,
		(unsigned long long)s->digest);
	for (unsigned i = 0; i < s->iterations; i++) {
		const struct rdmamig_iteration *it = &s->iter[i];

		fprintf(f, "%s\n    {\"index\": %u, \"pages\": %llu, \"bytes\": %llu, \"duration_ns\": %llu, "
			"\"bandwidth\": %llu, \"dirty_pages\": %llu, \"dirty_rate\": %llu, \"throttle\": %u}",
			i ? "," : "", it->index, (unsigned long long)it->pages, (unsigned long long)it->bytes,
			(unsigned long long)it->duration_ns, (unsigned long long)it->bandwidth,
			(unsigned long long)it->dirty_pages, (unsigned long long)it->dirty_rate, it->throttle);
	}
	fprintf(f, "\n  ]\n}\n");
	fclose(f);
}

static void print_summary(const struct cli *c, const struct rdmamig_stats *s)
{
	if (c->verbosity < 1)
		return;
	if (c->src) {
		say("rdmamig: migrated a %.0f MiB guest in %.2f s: %.1f MiB sent in %u iterations, %llu zero pages skipped\n",
		    s->ram_bytes / 1048576.0, s->total_ns / 1e9, s->bytes / 1048576.0, s->iterations,
		    (unsigned long long)s->zero_pages_skipped);
		say("rdmamig: downtime %.1f ms = pause %.1f + final sync %.1f + final send %.1f + state %.1f + "
		    "handover %.1f (destination drain and load; load %.1f) + GO to RESUMED %.1f (destination "
		    "resume %.1f) + recovery %.1f + unaccounted %.1f; --verify digests %.1f (both sides); setup %.1f ms "
		    "(registration %.1f)\n",
		    s->downtime_ns / 1e6, s->pause_ns / 1e6, s->final_sync_ns / 1e6, s->final_send_ns / 1e6,
		    s->state_ns / 1e6, s->handover_ns / 1e6, s->load_ns / 1e6, s->go_ns / 1e6,
		    s->resume_ns / 1e6, s->recover_ns / 1e6, s->unaccounted_ns / 1e6, s->verify_ns / 1e6, s->setup_ns / 1e6,
		    s->registration_ns / 1e6);
		if (s->verified)
			say("rdmamig: verify: RAM digest %#llx %s\n", (unsigned long long)s->digest,
			    s->verified > 0 ? "matches on both sides" : "DIFFERS at the destination");
	} else {
		say("rdmamig: received %.1f MiB RAM and %llu bytes of state; guest resumed in %.1f ms\n",
		    s->ram_bytes / 1048576.0, (unsigned long long)s->state_bytes, s->resume_ns / 1e6);
	}
}

/* cancelled: a signal ended the migration itself (not the run-on after). */
static int exit_for(int rc, bool cancelled)
{
	if (rc == RDMAMIG_E_INDOUBT)
		return EXIT_INDOUBT;
	if (cancelled)
		return EXIT_CANCELLED;
	switch (rc) {
	case 0: return EXIT_OK;
	case RDMAMIG_E_REFUSED: return EXIT_REFUSED;
	case RDMAMIG_E_VERIFY: return EXIT_VERIFY;
	case RDMAMIG_E_AUTH: return EXIT_AUTH;
	default: return EXIT_FAILED;
	}
}

/* Run the guest on for secs (0: until SIGINT/SIGTERM), saying every second
 * how far it got.  Returns its progress before. */
static uint64_t run_on(struct rm_kvm_vm *vm, unsigned secs, const char *who)
{
	uint64_t p0 = rm_kvm_vm_progress(vm);

	for (unsigned i = 0; (secs == 0 || i < secs * 10) && !sigs.got; i++) {
		sleep_ms(100);
		if (i % 10 == 9)
			say("rdmamig: %s (%s): progress %llu -> %llu, integrity errors %llu\n", who,
			    rm_kvm_vm_is_paused(vm) ? "PAUSED" : "running", (unsigned long long)p0,
			    (unsigned long long)rm_kvm_vm_progress(vm),
			    (unsigned long long)rm_kvm_vm_integrity_errors(vm));
	}
	return p0;
}

/* Source, the handover's outcome unknown: the guest stays paused; ask the
 * destination again until it answers or the operator ends this process.
 * Returns 0 (the destination runs it), RDMAMIG_OUTCOME_SOURCE (resumed
 * here) or RDMAMIG_E_INDOUBT (ended by a signal, still paused). */
static int wait_outcome(rdmamig_t *m)
{
	say("rdmamig: the outcome of the handover is unknown: the guest stays PAUSED here and must not "
	    "be started anywhere until it is settled; asking the destination again every %d s "
	    "(`rdmamig --recover %d` asks now; SIGINT/SIGTERM ends this, exit %d)\n", RECOVER_RETRY_S,
	    (int)getpid(), EXIT_INDOUBT);
	for (;;) {
		for (unsigned i = 0; i < RECOVER_RETRY_S * 10 && !sigs.got && !sigs.recover; i++)
			sleep_ms(100);
		if (sigs.got)
			return RDMAMIG_E_INDOUBT;
		sigs.recover = 0;
		int ret = rdmamig_recover(m);

		if (ret >= 0)
			return ret;
		say("rdmamig: still unknown (%s); the guest stays PAUSED\n", rdmamig_strerror(ret));
	}
}

/* The host's MemAvailable in bytes; 0 (the library's default) when /proc
 * does not say. */
static uint64_t mem_available(void)
{
	unsigned long long kib = 0;
	char line[128];
	FILE *f = fopen("/proc/meminfo", "re");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kib << 10;
}

int main(int argc, char **argv)
{
	struct cli c = {
		.mem = 256ull << 20,
		.vcpus = 2,
		.wl = { .kind = RM_GUEST_UNIFORM, .rate_pages_per_sec = 2000 },
		.backing = { .kind = RM_BACKING_ANON, .numa_node = -1, .prefault = true },
		.tracker = RM_DIRTY_CLEAR,
		.warmup_s = 2,
		.run_after_s = 3,
		.verbosity = 1,
		.opts = { .transport = RDMAMIG_TRANSPORT_RDMA },
	};
	struct rm_kvm_vmm *vmm;
	struct rdmamig_stats stats;
	sigset_t set;
	pthread_t sigthread;
	rdmamig_t *m;
	int rc;

	tty = isatty(STDERR_FILENO);
	parse_args(&c, argc, argv);
	if (c.recover_pid) {
		if (kill(c.recover_pid, SIGUSR1)) {
			fprintf(stderr, "rdmamig: --recover %d: %s\n", (int)c.recover_pid, strerror(errno));
			return EXIT_FAILED;
		}
		printf("rdmamig: asked process %d to ask its destination for the outcome now; its log "
		       "says what it learns\n", (int)c.recover_pid);
		return EXIT_OK;
	}
	rdmamig_set_log(log_hook, &c, c.verbosity >= 2 ? RDMAMIG_LOG_DEBUG : RDMAMIG_LOG_INFO);
	if (c.backing.numa_node < 0) {
		/* Near the NIC that moves it: a preference, not a bind. */
		c.backing.numa_node = cli_nic_numa_node(c.addr, c.port, c.src);
		c.backing.numa_preferred = true;
		if (c.backing.numa_node >= 0)
			say("rdmamig: guest RAM prefers NUMA node %d, the NIC's (--numa to choose)\n",
			    c.backing.numa_node);
	}
	c.opts.progress = progress;
	c.opts.progress_opaque = &c;
	if (c.opts.no_auth)
		say("rdmamig: warning: --no-auth: %s\n",
		    c.src ? "any host that answers on the destination's address receives this guest"
			  : "any host that reaches this port can write guest RAM and run its guest here");

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	pthread_create(&sigthread, NULL, signal_thread, &set);

	if (c.src) {
		struct rm_kvm_vm_opts vo = { .nr_vcpus = c.vcpus, .ram_size = c.mem, .backing = c.backing };

		vmm = rm_kvm_vmm_new_source(&vo, &c.wl, c.tracker);
		if (!vmm) {
			say("rdmamig: cannot start the guest: %s\n", strerror(errno));
			return EXIT_GUEST;
		}
		say("rdmamig: guest running: %u vCPUs, %.0f MiB RAM; warming up %u s\n", c.vcpus,
		    c.mem / 1048576.0, c.warmup_s);
		for (unsigned i = 0; i < c.warmup_s * 10 && !sigs.got; i++)
			sleep_ms(100);
		say("rdmamig: guest progress %llu, integrity errors %llu; migrating to %s port %s over %s\n",
		    (unsigned long long)rm_kvm_vm_progress(rm_kvm_vmm_vm(vmm)),
		    (unsigned long long)rm_kvm_vm_integrity_errors(rm_kvm_vmm_vm(vmm)), c.addr, c.port,
		    c.opts.transport == RDMAMIG_TRANSPORT_TCP ? "tcp" : "rdma");
	} else {
		struct rm_kvm_vm_opts vo = { .nr_vcpus = c.vcpus, .ram_size = c.mem, .backing = c.backing };

		/* The library's default cap is the host's MemAvailable when the
		 * source asks; a destination created up front already holds the
		 * RAM that source will fill, so the cap is what was available
		 * before it took it. */
		if (c.shape_given && !c.opts.max_mem)
			c.opts.max_mem = mem_available();
		vmm = rm_kvm_vmm_new_dest(&c.backing, c.shape_given ? &vo : NULL);
		if (!vmm) {
			say("rdmamig: cannot create the destination VM: %s\n", strerror(errno));
			return EXIT_GUEST;
		}
	}

	m = rdmamig_new(&c.opts, &rm_kvm_vmm_ops, vmm);
	if (!m) {
		rm_kvm_vmm_free(vmm);
		return EXIT_USAGE;
	}
	pthread_mutex_lock(&sigs.lock);
	sigs.m = sigs.got ? NULL : m;
	pthread_mutex_unlock(&sigs.lock);
	rc = sigs.got ? RDMAMIG_E_ABORTED : rdmamig_run(m);
	pthread_mutex_lock(&sigs.lock);
	sigs.m = NULL;
	pthread_mutex_unlock(&sigs.lock);
	bool cancelled = sigs.got;

	if (rc == RDMAMIG_E_INDOUBT && c.src) {
		int ret = wait_outcome(m);

		if (ret == RDMAMIG_OUTCOME_DESTINATION)
			rc = 0;
		else if (ret == RDMAMIG_OUTCOME_SOURCE)
			rc = RDMAMIG_E_ABORTED, cancelled = false;
	}
	rdmamig_get_stats(m, &stats);
	rdmamig_free(m);
	/* A bare destination populates behind the migration until the state
	 * is loaded (kvm/vmm.c), a thread finishing its last chunk behind the
	 * switchover: its JSON reports how far it got and when it ended. */
	struct rm_populator *pop = c.src ? NULL : rm_kvm_vmm_populator(vmm);

	if (pop && c.json && !rc)
		rm_populate_wait(pop, UINT64_MAX, 600000);
	if (c.json)
		write_json(&c, rc, &stats, pop);

	if (rc == RDMAMIG_E_INDOUBT) {
		say("rdmamig: ended with the outcome unknown; the guest was PAUSED here throughout and is "
		    "discarded with this process: check whether the destination runs it\n");
		rm_kvm_vmm_free(vmm);
		return EXIT_INDOUBT;
	}
	if (rc) {
		say("rdmamig: migration failed: %s\n", rdmamig_strerror(rc));
		if (c.src && rm_kvm_vmm_vm(vmm)) {
			struct rm_kvm_vm *vm = rm_kvm_vmm_vm(vmm);
			uint64_t p0;

			sigs.got = 0;	/* a cancel ended the migration, not the run-on */
			say("rdmamig: the source guest runs on here; %s\n",
			    c.run_after_s ? "--run-after bounds it" : "SIGINT/SIGTERM ends it");
			p0 = run_on(vm, c.run_after_s, "the source guest runs on");
			say("rdmamig: the source guest runs on (%s): progress %llu -> %llu, integrity errors %llu\n",
			    rm_kvm_vm_is_paused(vm) ? "PAUSED" : "running", (unsigned long long)p0,
			    (unsigned long long)rm_kvm_vm_progress(vm),
			    (unsigned long long)rm_kvm_vm_integrity_errors(vm));
		}
		rm_kvm_vmm_free(vmm);
		return exit_for(rc, cancelled);
	}
	print_summary(&c, &stats);

	int code = EXIT_OK;
	if (c.src) {
		say("rdmamig: the destination runs the guest; releasing it here\n");
	} else {
		struct rm_kvm_vm *vm = rm_kvm_vmm_vm(vmm);
		uint64_t p0 = rm_kvm_vm_progress(vm);

		say("rdmamig: guest running here from progress %llu\n", (unsigned long long)p0);
		run_on(vm, c.run_after_s, "guest");
		if (rm_kvm_vm_integrity_errors(vm) || rm_kvm_vm_fault(vm)) {
			say("rdmamig: the guest reports %llu integrity errors (fault %d) after migration\n",
			    (unsigned long long)rm_kvm_vm_integrity_errors(vm), rm_kvm_vm_fault(vm));
			code = EXIT_GUEST;
		} else if (rm_kvm_vm_progress(vm) <= p0 && c.wl.kind != RM_GUEST_IDLE) {
			say("rdmamig: the guest made no progress after migration\n");
			code = EXIT_GUEST;
		} else {
			say("rdmamig: guest progress moved on from %llu to %llu, no integrity errors\n",
			    (unsigned long long)p0, (unsigned long long)rm_kvm_vm_progress(vm));
		}
	}
	rm_kvm_vmm_free(vmm);
	return code;
}
