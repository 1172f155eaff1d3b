/*
 * rdmamig.h — the one public header of librdmamig, an RDMA-first live-migration
 * transport for KVM virtual machines.
 *
 * Conventions: every int-returning function returns >= 0 on success and
 * -errno on failure; pointer-returning functions return NULL and set errno.
 * The library never prints and never exits: it reports through the log hook
 * installed with rdmamig_set_log().  Handles are opaque.
 */
#ifndef RDMAMIG_H
#define RDMAMIG_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RDMAMIG_VERSION_MAJOR 0
#define RDMAMIG_VERSION_MINOR 1
#define RDMAMIG_VERSION_PATCH 0

/* Version of the library actually linked, as "MAJOR.MINOR.PATCH". */
const char *rdmamig_version(void);

/* Log levels, most severe first. */
enum rdmamig_log_level {
	RDMAMIG_LOG_ERR = 3,
	RDMAMIG_LOG_WARN = 4,
	RDMAMIG_LOG_INFO = 6,
	RDMAMIG_LOG_DEBUG = 7,
};

/*
 * Log hook.  Called from whichever library thread has something to say,
 * possibly concurrently: it must be thread-safe.  msg has no trailing newline.
 * With no hook installed the library is silent.
 */
typedef void (*rdmamig_log_fn)(void *opaque, enum rdmamig_log_level level, const char *msg);

/* Install (or with fn == NULL, remove) the process-wide log hook.  Messages
 * above max_level are dropped before they are formatted. */
void rdmamig_set_log(rdmamig_log_fn fn, void *opaque, enum rdmamig_log_level max_level);

/*
 * Text for an error returned by the library (a negative errno, or one of the
 * library's own codes below).  Never NULL.
 */
const char *rdmamig_strerror(int err);

/* The library's own error codes, beyond errno's range. */
enum rdmamig_error {
	RDMAMIG_E_PROTO = -1000,	/* the peer broke the wire protocol */
	RDMAMIG_E_REFUSED = -1001,	/* the peer refused the handshake */
	RDMAMIG_E_ABORTED = -1002,	/* the peer (or the user) aborted */
	RDMAMIG_E_WC = -1003,		/* an RDMA work completion failed */
	RDMAMIG_E_VERIFY = -1004,	/* RAM digests differ after migration */
	RDMAMIG_E_AUTH = -1005,		/* the peer did not prove the pre-shared key */
	RDMAMIG_E_INDOUBT = -1006,	/* source: GO was sent, the destination's
					 * answer never came; the guest stays paused
					 * until rdmamig_recover() settles it */
};


/* ------------------------------------------------------------------------ */
/* The VMM ops table: what an embedding VMM gives the engine.               */
/* ------------------------------------------------------------------------ */

#define RDMAMIG_VMM_OPS_VERSION 2
#define RDMAMIG_PSK_MIN 16	/* pre-shared key bytes */
#define RDMAMIG_PSK_MAX 64
#define RDMAMIG_MAX_REGIONS 64
#define RDMAMIG_CPU_MODEL_LEN 48

/* One region of guest RAM.  ids are the VMM's and must match on both sides. */
struct rdmamig_ram_region {
	uint32_t id;
	void *host_addr;	/* page-aligned; the engine reads (source) or the
				 * transport writes (destination) it */
	uint64_t size;		/* a multiple of the page size */
	uint64_t gpa;		/* guest-physical base, for the compatibility check */
};

/*
 * What the source says about its VM; the destination's VMM must match it.
 * Filled by the source's describe(); handed to the destination's prepare().
 */
struct rdmamig_vm_desc {
	uint32_t page_size;
	uint32_t nr_vcpus;
	char cpu_model[RDMAMIG_CPU_MODEL_LEN];	/* NUL-terminated */
	uint32_t payload_version;	/* the VMM's device-state format version */
	uint32_t nr_regions;
	struct rdmamig_ram_region regions[RDMAMIG_MAX_REGIONS];	/* host_addr unused */
};

/*
 * Callbacks.  All are called from the thread that runs rdmamig_run() (the
 * migration thread), never concurrently, and only between rdmamig_run()'s
 * start and return.  Return values: 0 (or a count where said) on success,
 * a negative errno on failure — the engine then ends the migration, and on
 * the source resumes the guest.  Optional callbacks may be NULL.
 *
 * Version 2 changed the dirty log contract: the VMM hands the engine its own
 * bitmaps (version 1 had it OR them into bitmaps the engine owned), and
 * dirty_sync()'s count is trusted.  A version 1 table is refused.
 */
struct rdmamig_vmm_ops {
	int version;		/* RDMAMIG_VMM_OPS_VERSION */

	/* Both sides, migration thread.  Describe the VM: its layout and
	 * identity.  On the destination this is called after prepare().
	 * 0 or -errno.  The engine checks the answer (a power-of-two page
	 * size of 4 KiB..1 GiB, 1..64 regions of whole pages with memory
	 * behind them, unique ids) and fails with -EINVAL, logged, on
	 * anything else. */
	int (*describe)(void *opaque, struct rdmamig_vm_desc *desc);

	/* Destination, migration thread, optional.  The source's description
	 * arrives (only from a source that proved the key, and within
	 * max_mem): create or check the VM so that describe() then matches
	 * it, with RAM zeroed.  Return a negative errno and log why
	 * (rdmamig_log) to refuse; the source is told the last error logged
	 * from this callback, or the errno's text. */
	int (*prepare)(void *opaque, const struct rdmamig_vm_desc *src);

	/* Source, migration thread.  Start dirty logging: from now on every
	 * guest write is reported by a later dirty_sync().  The engine's bulk
	 * pass that follows sends every page.  0 or -errno. */
	int (*dirty_start)(void *opaque);
	/*
	 * Source, migration thread.  Report the pages dirtied since the last
	 * call (or since dirty_start): point bitmaps[r], for each region r of
	 * describe(), at a bitmap of that region in which exactly those pages
	 * are set — bit i % 64 of word i / 64 for page i, no bit set past the
	 * region's last page.  The bitmaps are the VMM's: the engine only reads
	 * them, and only until the next dirty_sync() or dirty_stop(); it keeps
	 * no bitmap of its own and never copies them, and it sends all of a
	 * report before it asks for the next.  Returns the number of
	 * pages set, exactly (the engine decides convergence on it without
	 * counting again), or -errno.
	 */
	long (*dirty_sync)(void *opaque, const uint64_t **bitmaps);
	/*
	 * Source, migration thread, optional.  Pages [first, first + n) of
	 * region r are about to be read for sending: re-arm tracking for them
	 * (KVM_CLEAR_DIRTY_LOG of what the last dirty_sync() reported there;
	 * in the bulk pass, before any dirty_sync(), of whatever dirty_start
	 * left unprotected).  The engine names only ranges that hold pages it
	 * will send, each range once per pass, in ascending order, so the VMM
	 * need not look for reported pages itself.  first is a multiple of 64,
	 * n too unless the range ends the region.  0 or -errno.
	 */
	int (*dirty_clear)(void *opaque, unsigned r, uint64_t first, uint64_t n);
	/* Source, migration thread.  Stop dirty logging; the bitmaps of the
	 * last dirty_sync() may be freed.  Also called on failure paths. */
	void (*dirty_stop)(void *opaque);

	/* Source, migration thread: stop every vCPU (returns once none runs).
	 * Destination: never called.  0 or -errno. */
	int (*pause)(void *opaque);
	/* Migration thread.  Source: run the guest again (after a failed or
	 * cancelled migration).  Destination: start the migrated guest.
	 * 0 or -errno. */
	int (*resume)(void *opaque);

	/* Source, migration thread, paused.  Save all vCPU and device state
	 * into a buffer the VMM allocates with malloc(); the engine frees it.
	 * 0 or -errno. */
	int (*save_state)(void *opaque, void **buf, size_t *len);
	/* Destination, migration thread.  Load state saved by the source's
	 * save_state().  The bytes come from the network: check everything;
	 * -EINVAL refuses. */
	int (*load_state)(void *opaque, const void *buf, size_t len);

	/* Source, migration thread, optional.  Slow the vCPUs to run at most
	 * (100 - percent)% of the time (autoconverge).  0 lifts the throttle.
	 * 0 or -errno. */
	int (*throttle)(void *opaque, unsigned percent);
};

/* ------------------------------------------------------------------------ */
/* Options, progress, stats                                                 */
/* ------------------------------------------------------------------------ */

enum rdmamig_transport {
	RDMAMIG_TRANSPORT_RDMA = 2,	/* the default */
	RDMAMIG_TRANSPORT_TCP = 1,
};

/*
 * How RDMA registers guest RAM.  A destination registers all of it in every
 * strategy but odp; with all and lazy it sends its layout at once and
 * registers behind it, chunk by chunk in the order the source sends, the
 * source writing each chunk as soon as it is registered (the first byte
 * moves after one chunk, whatever the guest's size).
 */
enum rdmamig_registration {
	RDMAMIG_REG_ALL = 0,	/* source: all RAM up front; destination: all
				 * of it, overlapped with the transfer (default) */
	RDMAMIG_REG_LAZY = 1,	/* source: chunks as they are first sent;
				 * destination: as all */
	RDMAMIG_REG_ODP = 2,	/* on-demand paging where the device offers it */
	RDMAMIG_REG_UPFRONT = 3, /* destination: all RAM before the first byte
				  * moves (the behaviour before overlapping,
				  * for comparison); source: as all */
};

enum rdmamig_role {
	RDMAMIG_SOURCE = 1,
	RDMAMIG_DESTINATION = 2,
};

/* Why the source switched over. */
enum rdmamig_switchover {
	RDMAMIG_SWITCH_NONE = 0,	/* did not get there */
	RDMAMIG_SWITCH_CONVERGED,	/* remaining bytes fit the downtime limit */
	RDMAMIG_SWITCH_MAX_ITERATIONS,
	RDMAMIG_SWITCH_DEADLINE,
};

/* How TLS ran (rdmamig_stats.tls): which records the kernel made. */
enum rdmamig_tls {
	RDMAMIG_TLS_OFF = 0,		/* no TLS: the stream was in the clear */
	RDMAMIG_TLS_USER = 1,		/* userspace (OpenSSL) both ways */
	RDMAMIG_TLS_KERNEL_TX = 2,	/* the kernel encrypted what this side sent;
					 * OpenSSL decrypted what it received */
	RDMAMIG_TLS_KERNEL = 3,		/* the kernel both ways */
};

struct rdmamig_progress {
	unsigned iteration;		/* 0: the first (bulk) pass */
	uint64_t remaining_bytes;	/* dirty bytes not yet sent */
	uint64_t sent_bytes;		/* RAM bytes sent so far */
	uint64_t bandwidth;		/* bytes/s measured over the last iteration */
	uint64_t dirty_rate;		/* bytes/s dirtied over the last iteration */
	uint64_t expected_downtime_ms;	/* remaining / bandwidth */
	unsigned throttle;		/* percent */
	int stage;			/* 0 setup, 1 iterate, 2 stop-and-copy, 3 done */
};

struct rdmamig_opts {
	enum rdmamig_role role;
	enum rdmamig_transport transport;
	const char *addr;		/* source: the destination's; destination: to bind */
	const char *port;		/* default "7471" */
	unsigned channels;		/* QPs / TCP connections; 0: default (2) */
	uint32_t max_write;		/* largest single write, power of two; 0: 1 MiB */
	enum rdmamig_registration registration;
	int timeout_ms;			/* how long a silent peer still counts as alive
					 * (keep-alives flow both ways, so a live peer
					 * is never silent), and the bound on accept and
					 * connect; never a bound on how long a migration
					 * takes.  At least 100; 0: 20000 */

	/*
	 * Peer authentication.  Both sides hold the same pre-shared key of
	 * psk_len bytes (RDMAMIG_PSK_MIN..RDMAMIG_PSK_MAX; e.g. 32 bytes from
	 * /dev/urandom) and each proves it to the other (HMAC-SHA256 over
	 * fresh nonces from both) before the destination creates, populates
	 * or registers anything for the source.  rdmamig_new() copies the
	 * key.  Running without authentication must be asked for with
	 * no_auth = 1: then any host that reaches the port can write the
	 * destination's guest RAM, and any host that answers on the
	 * destination's address receives the source's guest.  Options with
	 * neither (a zeroed struct) are refused with EINVAL.
	 */
	const void *psk;
	size_t psk_len;
	int no_auth;

	/*
	 * TCP transport only: TLS 1.3 on every connection, from its first
	 * byte, keyed by a key derived from psk (so a key is required; both
	 * sides must set tls).  Without it the TCP stream, guest RAM and
	 * device state included, crosses the network in the clear (only
	 * authenticated).  Kernel TLS is used where the kernel and OpenSSL
	 * offer it; stats.tls says which way the records were made.
	 */
	int tls;

	/* Destination: refuse a source whose guest RAM is larger, before
	 * prepare() allocates anything.  0: the host's MemAvailable when the
	 * source's description arrives. */
	uint64_t max_mem;

	unsigned downtime_ms;		/* switchover limit; 0: 300 */
	unsigned max_iterations;	/* 0: 30 */
	uint64_t deadline_ms;		/* switch over by then (from the start); 0: none */
	uint64_t max_bandwidth;		/* bytes/s cap on RAM sending; 0: none */
	int autoconverge;		/* throttle vCPUs when iterations don't shrink */
	unsigned throttle_initial;	/* percent; 0: 20 */
	unsigned throttle_step;		/* percent; 0: 10 */
	unsigned throttle_max;		/* percent; 0: 99 */
	int verify;			/* digest guest RAM on both sides and compare */
	/* Once the outcome of a handover is unknown (a link lost after GO or
	 * LOADED), the source reconnects for this long to ask the destination
	 * what it did, and the destination answers for twice as long.
	 * 0: 30000. */
	unsigned recover_ms;

	/* Called from the migration thread at the end of each iteration and
	 * at each stage change (however close together those are), and
	 * between them at most every 100 ms during long passes.  Optional. */
	void (*progress)(void *opaque, const struct rdmamig_progress *p);
	void *progress_opaque;
};

struct rdmamig_iteration {
	unsigned index;
	uint64_t pages;			/* pages sent */
	uint64_t bytes;
	uint64_t duration_ns;
	uint64_t bandwidth;		/* bytes/s */
	uint64_t dirty_pages;		/* dirtied during it (the next sync) */
	uint64_t dirty_rate;		/* bytes/s */
	unsigned throttle;
};

#define RDMAMIG_MAX_ITER_STATS 256

struct rdmamig_stats {
	enum rdmamig_switchover switchover;
	uint64_t total_ns;		/* rdmamig_run() from its start (destination: from
					 * accepting) to the acknowledgment; on failure, to
					 * its return */
	uint64_t setup_ns;		/* connect, handshake, registration */
	uint64_t registration_ns;	/* part of setup: RAM registration */
	uint64_t downtime_ns;		/* pause to destination resumed (source clock) */
	uint64_t pause_ns;		/* downtime split: stopping the vCPUs */
	uint64_t final_sync_ns;		/*   final dirty sync */
	uint64_t final_send_ns;		/*   final RAM send + fence */
	uint64_t state_ns;		/*   device state save + send */
	uint64_t resume_ns;		/*   destination: load + resume (its clock) */
	uint64_t verify_ns;		/*   --verify: both sides' RAM digests */
	uint64_t handover_ns;		/*   COMMIT sent to LOADED back: the destination
					 *   drains what is in flight (the TCP socket
					 *   buffers), checks, loads state (load_ns) */
	uint64_t load_ns;		/*     of which the destination's check + load
					 *     (its clock) */
	uint64_t go_ns;			/*   GO sent to RESUMED back (resume_ns + a
					 *   round trip), or to the answer's loss */
	uint64_t recover_ns;		/*   a lost answer to GO: from noticing the
					 *   loss to the outcome (RECOVER/OUTCOME) */
	uint64_t unaccounted_ns;	/*   downtime minus pause, final sync, final
					 *   send, source verify, state, handover, go,
					 *   recover */
	unsigned recoveries;		/* outcomes settled by RECOVER/OUTCOME */
	int tls;			/* enum rdmamig_tls: how this side's TLS ran */
	uint64_t bytes;			/* guest RAM bytes sent */
	uint64_t pages;
	uint64_t zero_pages_skipped;	/* first pass */
	uint64_t state_bytes;
	uint64_t ram_bytes;		/* guest RAM size */
	uint64_t digest;		/* --verify: RAM digest at switchover */
	int verified;			/* 1 digests matched, 0 not asked, -1 mismatch */
	unsigned iterations;		/* number of entries used in iter[] */
	struct rdmamig_iteration iter[RDMAMIG_MAX_ITER_STATS];
	/* Registration at setup (RDMA; 0 on TCP): the bytes this side
	 * registered and the time its registration calls took, without the
	 * LAYOUT exchange that registration_ns also holds.  Their ratio is the
	 * cost per GiB (the CLI's JSON gives registration_ns_per_gib). */
	uint64_t registration_bytes;
	uint64_t registration_call_ns;
	/* Source, RDMA: time its writes waited for the destination to register
	 * the chunk they go to (0 when it kept ahead, or registered up front). */
	uint64_t registration_wait_ns;
	/* Source: from the start to the first RAM handed to the transport. */
	uint64_t first_write_ns;
};

/* ------------------------------------------------------------------------ */
/* A migration                                                              */
/* ------------------------------------------------------------------------ */

typedef struct rdmamig rdmamig_t;

/* NULL + errno (EINVAL for bad options, no key without no_auth, or an ops
 * table of another version).  opts and the strings and key it points to
 * are copied: the caller may free them on return. */
rdmamig_t *rdmamig_new(const struct rdmamig_opts *opts, const struct rdmamig_vmm_ops *ops,
		       void *vmm_opaque);

/*
 * Run the migration on the calling thread, to the end.  Source: connect,
 * iterate, switch over, hand over (migration/protocol.h); on any failure
 * before it sent GO, the guest is resumed and runs on.  After GO it never
 * resumes on its own: a lost answer is asked for again (opts.recover_ms),
 * and if it stays unknown rdmamig_run() returns RDMAMIG_E_INDOUBT with the
 * guest paused.  Destination: listen, accept one source, receive, load,
 * wait for GO, resume the guest, acknowledge; it answers a recovering
 * source on the same address.
 * 0 on success, else a negative errno or RDMAMIG_E_*; the log says why.
 */
int rdmamig_run(rdmamig_t *m);

/*
 * Source, after rdmamig_run() returned RDMAMIG_E_INDOUBT (GO sent, the
 * answer lost): connect to the destination once more (bounded by
 * opts.timeout_ms) and ask what it did, then act on it.
 *   RDMAMIG_OUTCOME_DESTINATION (0)  the destination runs the guest: the
 *                                    source's copy is stale, release it
 *   RDMAMIG_OUTCOME_SOURCE (1)       it never got GO and discarded: the
 *                                    source guest has been resumed
 *   RDMAMIG_E_INDOUBT                still unknown (destination unreachable);
 *                                    the guest stays paused — try again
 *   another negative code            an error; the guest stays paused
 */
enum { RDMAMIG_OUTCOME_DESTINATION = 0, RDMAMIG_OUTCOME_SOURCE = 1 };
int rdmamig_recover(rdmamig_t *m);

/* Any thread, any time (not from a signal handler): make rdmamig_run()
 * give up within about 100 ms in any phase — listening, connecting, the
 * handshake, iterating — once a VMM callback in progress has returned; it
 * returns RDMAMIG_E_ABORTED. */
void rdmamig_cancel(rdmamig_t *m);

/* Stats so far; complete after rdmamig_run() returns.  Any thread. */
void rdmamig_get_stats(rdmamig_t *m, struct rdmamig_stats *out);

/* The port a destination listens on (useful with port "0"); -errno if not
 * listening yet.  Any thread. */
int rdmamig_listen_port(rdmamig_t *m);

void rdmamig_free(rdmamig_t *m);

/* Log from VMM callbacks through the same hook. */
void rdmamig_log(enum rdmamig_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif /* RDMAMIG_H */
