/*
 * migration/migration.c — the engine's stages: setup, iterate, decide,
 * stop-and-copy on the source; accept, prepare, receive, load, resume on the
 * destination.  Sees the VMM only through struct rdmamig_vmm_ops and the
 * network only through transport/transport.h.  The message sequence is drawn
 * at the top of migration/protocol.h.
 *
 * The invariant everything here serves: at most one copy of the guest runs,
 * and after any failure exactly one is runnable.  Until GO leaves the source
 * any failure resumes the source guest; from COMMIT on, handover.c runs the
 * state table of protocol.h, including the recovery of a lost answer.
 */
#include <inttypes.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/fault.h"
#include "common/log.h"
#include "migration/engine.h"

#define DEFAULT_PORT "7471"
#define DEFAULT_TIMEOUT_MS 20000
#define TICK_NS 100000000ull		/* progress callback period */
/* Source → destination progress report (ITER), for the destination's
 * progress and stats.  Liveness is the transport's (KEEPALIVE), so this
 * period bounds nothing. */
#define PROGRESS_REPORT_NS 1000000000ull

RM_EXPORT void rdmamig_log(enum rdmamig_log_level level, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rm_log(level, "%s", msg);
}

bool rm_mig_cancelled(struct rdmamig *m)
{
	return atomic_load(&m->cancelled) != 0;
}

static bool ops_valid(const struct rdmamig_vmm_ops *ops, enum rdmamig_role role)
{
	if (!ops || ops->version != RDMAMIG_VMM_OPS_VERSION || !ops->describe)
		return false;
	if (role == RDMAMIG_SOURCE)
		return ops->dirty_start && ops->dirty_sync && ops->dirty_stop && ops->pause &&
		       ops->resume && ops->save_state;
	return ops->load_state && ops->resume;
}

RM_EXPORT rdmamig_t *rdmamig_new(const struct rdmamig_opts *opts, const struct rdmamig_vmm_ops *ops,
				 void *vmm_opaque)
{
	struct rdmamig *m;

	if (!opts || (opts->role != RDMAMIG_SOURCE && opts->role != RDMAMIG_DESTINATION) ||
	    (opts->transport != RDMAMIG_TRANSPORT_RDMA && opts->transport != RDMAMIG_TRANSPORT_TCP) ||
	    (opts->role == RDMAMIG_SOURCE && !opts->addr)) {
		rm_err("rdmamig_new: bad options (role, transport, or a source without an address)");
		errno = EINVAL;
		return NULL;
	}
	if (!ops_valid(ops, opts->role)) {
		rm_err("rdmamig_new: the VMM ops table is not version %d or lacks a required callback",
		       RDMAMIG_VMM_OPS_VERSION);
		errno = EINVAL;
		return NULL;
	}
	if (!opts->no_auth == !opts->psk_len || (opts->psk_len && !opts->psk) ||
	    (opts->psk_len && (opts->psk_len < RDMAMIG_PSK_MIN || opts->psk_len > RDMAMIG_PSK_MAX))) {
		rm_err("rdmamig_new: %s", opts->psk_len && opts->no_auth
			       ? "a pre-shared key and no_auth both given"
			       : opts->psk_len ? "the pre-shared key must be 16 to 64 bytes"
			       : "no pre-shared key: give one (psk, psk_len), or set no_auth = 1 to let "
				 "any host that reaches the port write guest RAM or receive the guest");
		errno = EINVAL;
		return NULL;
	}
	if (opts->tls && (!opts->psk_len || opts->transport != RDMAMIG_TRANSPORT_TCP)) {
		rm_err("rdmamig_new: tls %s", opts->psk_len ? "is for the TCP transport only"
			       : "needs the pre-shared key (psk) it derives its key from");
		errno = EINVAL;
		return NULL;
	}
	_Static_assert(RDMAMIG_PSK_MIN == RM_TR_PSK_MIN && RDMAMIG_PSK_MAX == RM_TR_PSK_MAX,
		       "the public key bounds are the transport's");
	m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	/* The embedder may free its strings once we return: keep copies. */
	m->addr = opts->addr ? strdup(opts->addr) : NULL;
	m->port = strdup(opts->port ? opts->port : DEFAULT_PORT);
	if ((opts->addr && !m->addr) || !m->port) {
		free(m->addr);
		free(m->port);
		free(m);
		errno = ENOMEM;
		return NULL;
	}
	m->opts = *opts;
	m->opts.addr = m->addr;
	m->opts.port = m->port;
	m->opts.psk = NULL;	/* the key lives in topts only */
	m->ops = ops;
	m->vmm = vmm_opaque;
	pthread_mutex_init(&m->lock, NULL);
	atomic_store(&m->listen_port, -ENOTCONN);
	m->topts = (struct rm_transport_opts){
		.kind = opts->transport == RDMAMIG_TRANSPORT_TCP ? RM_TRANSPORT_TCP : RM_TRANSPORT_RDMA,
		.addr = m->addr,
		.port = m->port,
		.nchan = opts->channels,
		.max_write = opts->max_write,
		.timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS,
		.reg = (enum rm_reg_strategy)opts->registration,
		.psk_len = (unsigned)opts->psk_len,
		.no_auth = opts->no_auth != 0,
		.cancel = &m->cancelled,	/* reaches accept, connect and the handshake */
	};
	if (opts->psk_len)
		memcpy(m->topts.psk, opts->psk, opts->psk_len);
	m->topts.tls = opts->tls != 0;
	return m;
}

RM_EXPORT void rdmamig_cancel(rdmamig_t *m)
{
	atomic_store(&m->cancelled, 1);
	pthread_mutex_lock(&m->lock);
	if (m->t)
		rm_tr_cancel(m->t);
	pthread_mutex_unlock(&m->lock);
}

RM_EXPORT void rdmamig_get_stats(rdmamig_t *m, struct rdmamig_stats *out)
{
	pthread_mutex_lock(&m->lock);
	*out = m->stats;
	pthread_mutex_unlock(&m->lock);
}

RM_EXPORT int rdmamig_listen_port(rdmamig_t *m)
{
	return atomic_load(&m->listen_port);
}

RM_EXPORT void rdmamig_free(rdmamig_t *m)
{
	if (!m)
		return;
	rm_tr_listener_close(m->listener);
	pthread_mutex_destroy(&m->lock);
	OPENSSL_cleanse(m->topts.psk, sizeof(m->topts.psk));
	free(m->addr);
	free(m->port);
	free(m);
}

/*
 * Check what the VMM's describe() said before anything divides by, loops
 * over or sends it: 0, or -EINVAL with the reason logged.
 */
static int check_desc(const struct rdmamig_vm_desc *d)
{
	char why[160] = "";

	if (d->page_size < 4096 || d->page_size > (1u << 30) || (d->page_size & (d->page_size - 1)))
		snprintf(why, sizeof(why), "page size %u is not a power of two in 4 KiB..1 GiB",
			 d->page_size);
	else if (!d->nr_regions || d->nr_regions > RDMAMIG_MAX_REGIONS)
		snprintf(why, sizeof(why), "%u RAM regions (1..%u allowed)", d->nr_regions,
			 RDMAMIG_MAX_REGIONS);
	for (uint32_t i = 0; !why[0] && i < d->nr_regions; i++) {
		const struct rdmamig_ram_region *r = &d->regions[i];

		if (!r->host_addr || !r->size || r->size % d->page_size)
			snprintf(why, sizeof(why),
				 "region %u (id %u): %" PRIu64 " bytes at %p, not whole pages of memory",
				 i, r->id, r->size, r->host_addr);
		for (uint32_t j = 0; !why[0] && j < i; j++)
			if (d->regions[j].id == r->id)
				snprintf(why, sizeof(why), "region id %u appears twice", r->id);
	}
	if (!why[0])
		return 0;
	rm_err("migration: the VMM's describe() is invalid: %s", why);
	return -EINVAL;
}

void rm_mig_set_transport(struct rdmamig *m, struct rm_transport *t)
{
	struct rm_transport_stats ts = { 0 };

	rm_tr_stats(t ? t : m->t, &ts);
	pthread_mutex_lock(&m->lock);
	if (!t && m->t) {
		/* The connection's last word on what registration cost: a
		 * destination registers behind its layout, so its figures grow
		 * after exchange_layout(). */
		if (ts.reg_bytes > m->stats.registration_bytes) {
			m->stats.registration_bytes = ts.reg_bytes;
			m->stats.registration_call_ns = ts.reg_ns;
		}
		m->stats.registration_wait_ns = ts.ready_wait_ns;
		if (ts.first_write_at > m->start_ns)
			m->stats.first_write_ns = ts.first_write_at - m->start_ns;
	}
	m->t = t;
	if (t) {
		m->stats.tls = (int)ts.tls;
	}
	if (t && rm_mig_cancelled(m))
		rm_tr_cancel(t);
	pthread_mutex_unlock(&m->lock);
}

void rm_mig_close_transport(struct rdmamig *m)
{
	struct rm_transport *t = m->t;

	rm_mig_set_transport(m, NULL);
	rm_tr_close(t);
}

void rm_mig_cut(struct rdmamig *m)
{
	struct rm_transport *t = m->t;

	rm_mig_set_transport(m, NULL);
	rm_tr_cut(t);
}

/* Source, iterating: the destination has nothing to say until COMMIT but a
 * REFUSE.  Anything else (an early RESUMED or LOADED) is a protocol error
 * found now, not after the guest is paused. */
static int poll_peer(struct rdmamig *m)
{
	struct rm_msg msg;
	enum rm_mig_state next;
	int ret = rm_tr_recv(m->t, &msg, 0);

	if (ret <= 0)
		return ret;
	if (rm_mig_lookup(m->state, msg.type, &next) == RM_ACT_REFUSED) {
		struct rm_mig_refuse r = { 0 };

		memcpy(&r, msg.data, msg.len < sizeof(r) ? msg.len : sizeof(r));
		r.text[sizeof(r.text) - 1] = '\0';
		rm_err("migration: the %s refused: %s",
			       m->opts.role == RDMAMIG_SOURCE ? "destination" : "source", r.text);
		rm_msg_free(&msg);
		return RDMAMIG_E_REFUSED;
	}
	rm_err("migration: %s: unexpected %s (%#x, %zu bytes): the destination has nothing to say "
	       "before COMMIT but REFUSE", rm_mig_state_name(m->state), rm_mig_type_name(msg.type),
	       msg.type, msg.len);
	rm_msg_free(&msg);
	return RDMAMIG_E_PROTO;
}

int rm_mig_tick(struct rdmamig *m, bool force)
{
	uint64_t now = rm_now_ns();
	int err = 0;

	/* Progress reports go on through stop-and-copy too: its final pass
	 * can take as long as any iteration on a slow link.  (Liveness is the
	 * transport's keep-alives; these only carry progress.) */
	if (m->opts.role == RDMAMIG_SOURCE && m->t && (m->progress.stage == 1 || m->progress.stage == 2) &&
	    (force || now - m->last_report_ns >= PROGRESS_REPORT_NS)) {
		struct rm_mig_iter it = {
			.index = htole32(m->progress.iteration),
			.bytes = htole64(m->progress.sent_bytes),
			.remaining_bytes = htole64(m->progress.remaining_bytes),
		};

		m->last_report_ns = now;
		err = rm_tr_send(m->t, RM_MIG_ITER, &it, sizeof(it));
		if (!err && m->state == RM_ST_SRC_ITERATE)
			err = poll_peer(m);
	}
	if (m->opts.progress && (force || now - m->last_progress_ns >= TICK_NS)) {
		struct rdmamig_progress p;

		m->last_progress_ns = now;
		pthread_mutex_lock(&m->lock);
		p = m->progress;
		pthread_mutex_unlock(&m->lock);
		m->opts.progress(m->opts.progress_opaque, &p);
	}
	return err;
}

int rm_mig_fault(struct rdmamig *m, const char *fmt, ...)
{
	char step[64];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(step, sizeof(step), fmt, ap);
	va_end(ap);
	return rm_fault_point(m->opts.role == RDMAMIG_SOURCE ? "src" : "dst", step, &m->cancelled);
}

int rm_mig_fault_step(struct rdmamig *m, const char *fmt, ...)
{
	char step[64];
	va_list ap;
	int fault;

	va_start(ap, fmt);
	vsnprintf(step, sizeof(step), fmt, ap);
	va_end(ap);
	fault = rm_mig_fault(m, "%s", step);
	if (fault == RM_FAULT_CUT || fault == RM_FAULT_DROP) {
		/* A positive return would read as success to the caller. */
		rm_mig_cut(m);
		return -ECONNRESET;
	}
	return fault;
}

void rm_mig_set_stage(struct rdmamig *m, int stage)
{
	pthread_mutex_lock(&m->lock);
	m->progress.stage = stage;
	pthread_mutex_unlock(&m->lock);
}

void rm_mig_refuse(struct rdmamig *m, int reason, const char *text)
{
	struct rm_mig_refuse r = { .reason = (int32_t)htole32((uint32_t)reason) };

	snprintf(r.text, sizeof(r.text), "%s", text);
	if (m->t && rm_tr_send(m->t, RM_MIG_REFUSE, &r, sizeof(r)) == 0)
		m->refused = true;
}

static void note_progress(struct rdmamig *m, const struct rm_msg *msg)
{
	struct rm_mig_iter it;

	memcpy(&it, msg->data, sizeof(it));
	pthread_mutex_lock(&m->lock);
	m->progress.iteration = le32toh(it.index);
	m->progress.sent_bytes = le64toh(it.bytes);
	m->progress.remaining_bytes = le64toh(it.remaining_bytes);
	m->stats.bytes = le64toh(it.bytes);
	pthread_mutex_unlock(&m->lock);
}

int rm_mig_expect(struct rdmamig *m, struct rm_msg *msg, int timeout_ms)
{
	for (;;) {
		enum rm_mig_state next;
		enum rm_mig_action act;
		char why[RM_MIG_TEXT];
		int ret = rm_tr_recv(m->t, msg, timeout_ms);

		if (ret < 0) {
			rm_err("migration: %s, waiting for %s: %s", rm_mig_state_name(m->state),
			       rm_mig_expected_name(m->state), rdmamig_strerror(ret));
			return ret;
		}
		act = rm_mig_lookup(m->state, msg->type, &next);
		if ((act == RM_ACT_TAKE || act == RM_ACT_PROGRESS) &&
		    rm_mig_body_check(msg->type, msg->data, msg->len, why, sizeof(why))) {
			rm_err("migration: %s: unexpected %s from the %s: %s", rm_mig_state_name(m->state),
			       rm_mig_type_name(msg->type),
			       m->opts.role == RDMAMIG_SOURCE ? "destination" : "source", why);
			rm_msg_free(msg);
			return RDMAMIG_E_PROTO;
		}
		switch (act) {
		case RM_ACT_TAKE:
			m->state = next;
			return 0;
		case RM_ACT_PROGRESS:
			note_progress(m, msg);
			rm_msg_free(msg);
			rm_mig_tick(m, false);
			continue;
		case RM_ACT_REFUSED: {
			struct rm_mig_refuse r = { 0 };

			if (msg->len)	/* data is NULL for an empty message */
				memcpy(&r, msg->data, msg->len < sizeof(r) ? msg->len : sizeof(r));
			r.text[sizeof(r.text) - 1] = '\0';
			rm_err("migration: the %s refused: %s",
			       m->opts.role == RDMAMIG_SOURCE ? "destination" : "source", r.text);
			rm_msg_free(msg);
			return RDMAMIG_E_REFUSED;
		}
		case RM_ACT_PROTO:
			break;
		}
		rm_err("migration: %s: unexpected %s (%#x, %zu bytes): expected %s, the peer sent %s",
		       rm_mig_state_name(m->state), rm_mig_type_name(msg->type), msg->type, msg->len,
		       rm_mig_expected_name(m->state), rm_mig_type_name(msg->type));
		rm_msg_free(msg);
		return RDMAMIG_E_PROTO;
	}
}

/* Both sides: register this side's RAM and exchange the layout; timed as
 * the registration cost. */
static int exchange_layout(struct rdmamig *m)
{
	struct rm_region regions[RDMAMIG_MAX_REGIONS];
	struct rm_transport_stats ts = { 0 };
	uint64_t t0;
	int err;

	for (uint32_t i = 0; i < m->desc.nr_regions; i++)
		regions[i] = (struct rm_region){
			.id = m->desc.regions[i].id,
			.addr = m->desc.regions[i].host_addr,
			.size = m->desc.regions[i].size,
		};
	t0 = rm_now_ns();
	err = rm_tr_layout(m->t, regions, m->desc.nr_regions);
	rm_tr_stats(m->t, &ts);
	pthread_mutex_lock(&m->lock);
	m->stats.registration_ns = rm_now_ns() - t0;
	m->stats.registration_bytes = ts.reg_bytes;
	m->stats.registration_call_ns = ts.reg_ns;
	pthread_mutex_unlock(&m->lock);
	return err;
}

/* ---------------------------------------------------------------- source */

static void record_iteration(struct rdmamig *m, unsigned idx, const struct rm_pass *pass,
			     uint64_t dirty_pages, unsigned throttle)
{
	uint64_t ps = m->desc.page_size;

	pthread_mutex_lock(&m->lock);
	m->stats.bytes += pass->bytes;
	m->stats.pages += pass->pages;
	m->stats.zero_pages_skipped += pass->zero_pages;
	if (m->stats.iterations < RDMAMIG_MAX_ITER_STATS) {
		m->stats.iter[m->stats.iterations++] = (struct rdmamig_iteration){
			.index = idx,
			.pages = pass->pages,
			.bytes = pass->bytes,
			.duration_ns = pass->ns,
			.bandwidth = rm_policy_bandwidth(pass->bytes, pass->ns),
			.dirty_pages = dirty_pages,
			.dirty_rate = rm_policy_bandwidth(dirty_pages * ps, pass->ns),
			.throttle = throttle,
		};
	}
	m->progress.iteration = idx;
	m->progress.sent_bytes = m->stats.bytes;
	m->progress.remaining_bytes = dirty_pages * ps;
	m->progress.bandwidth = rm_policy_bandwidth(pass->bytes, pass->ns);
	m->progress.dirty_rate = rm_policy_bandwidth(dirty_pages * ps, pass->ns);
	m->progress.expected_downtime_ms = m->progress.remaining_bytes * 1000 / m->progress.bandwidth;
	m->progress.throttle = throttle;
	pthread_mutex_unlock(&m->lock);
}

static int source_handshake(struct rdmamig *m)
{
	struct rm_transport *t;
	struct rm_mig_setup *setup;
	struct rm_msg msg;
	size_t len;
	int err;

	err = rm_tr_connect(&m->topts, &t);
	if (err) {
		rm_err("migration: cannot connect to %s port %s: %s", m->topts.addr, m->topts.port,
		       rdmamig_strerror(err));
		return err;
	}
	rm_mig_set_transport(m, t);
	while (!m->migration_id)
		if (getrandom(&m->migration_id, sizeof(m->migration_id), 0) != sizeof(m->migration_id))
			return -errno;
	setup = rm_mig_setup_encode(&m->desc, m->opts.verify ? RM_MIG_F_VERIFY : 0, m->migration_id,
				    &len);
	if (!setup)
		return -errno;
	err = rm_tr_send(m->t, RM_MIG_SETUP, setup, len);
	free(setup);
	if (err)
		return err;
	m->state = RM_ST_SRC_SETUP;
	err = rm_mig_expect(m, &msg, -1);
	if (err)
		return err;
	rm_msg_free(&msg);

	return exchange_layout(m);
}

/* Pause, send the rest, STATE and COMMIT, then hand over (handover.c).
 * Each piece of the downtime is timed here, so that the split adds up to
 * the measured downtime (what it does not explain is reported too). */
static int stop_and_copy(struct rdmamig *m)
{
	struct rm_mig_commit commit = { 0 };
	struct rm_pass pending, pass;
	void *state = NULL;
	size_t state_len = 0;
	uint64_t t0, digest = 0, src_verify = 0;
	long dirty;
	int err;

	rm_mig_set_stage(m, 2);
	m->t_pause = rm_now_ns();
	err = m->ops->pause(m->vmm);
	if (err) {
		rm_err("migration: pausing the guest failed: %s", rdmamig_strerror(err));
		return err;
	}
	m->paused = true;

	t0 = rm_now_ns();
	pthread_mutex_lock(&m->lock);
	m->stats.pause_ns = t0 - m->t_pause;
	pthread_mutex_unlock(&m->lock);
	/* The last iteration's report is still to go, and the final sync
	 * replaces it with the VMM's next one: send it first.  The guest is
	 * paused, so these pages are read in their final state. */
	err = rm_ram_send_pass(m, false, false, &pending);
	if (err)
		return err;
	t0 = rm_now_ns();
	dirty = rm_ram_sync(m);
	if (dirty < 0)
		return (int)dirty;
	pthread_mutex_lock(&m->lock);
	m->stats.final_sync_ns = rm_now_ns() - t0;
	pthread_mutex_unlock(&m->lock);

	err = rm_ram_send_pass(m, false, true, &pass);
	if (err)
		return err;
	pass.pages += pending.pages;
	pass.bytes += pending.bytes;
	pass.ns += pending.ns;
	record_iteration(m, m->progress.iteration + 1, &pass, 0, m->progress.throttle);
	pthread_mutex_lock(&m->lock);
	m->stats.final_send_ns = pass.ns;
	pthread_mutex_unlock(&m->lock);

	if (m->opts.verify) {
		t0 = rm_now_ns();
		digest = rm_ram_digest(&m->desc);
		src_verify = rm_now_ns() - t0;
		pthread_mutex_lock(&m->lock);
		m->stats.verify_ns = src_verify;
		pthread_mutex_unlock(&m->lock);
	}

	err = rm_mig_fault_step(m, "send-STATE");
	if (err)
		return err;
	t0 = rm_now_ns();
	err = m->ops->save_state(m->vmm, &state, &state_len);
	if (err) {
		rm_err("migration: saving vCPU and device state failed: %s", rdmamig_strerror(err));
		return err;
	}
	err = rm_tr_send(m->t, RM_MIG_STATE, state, state_len);
	free(state);
	if (err)
		return err;
	commit.digest = htole64(digest);
	commit.flags = htole32(m->opts.verify ? RM_MIG_F_VERIFY : 0);
	commit.state_len = htole64(state_len);
	/* From here a destination may hold the loaded guest: a failure
	 * before GO still resumes this side, but tells it (abandon). */
	m->state = RM_ST_SRC_COMMITTED;
	err = rm_tr_send(m->t, RM_MIG_COMMIT, &commit, sizeof(commit));
	if (err)
		return err;
	pthread_mutex_lock(&m->lock);
	m->stats.state_ns = rm_now_ns() - t0;
	m->stats.state_bytes = state_len;
	m->stats.digest = digest;
	m->split_ns = m->stats.pause_ns + m->stats.final_sync_ns + m->stats.final_send_ns + src_verify +
		      m->stats.state_ns;
	pthread_mutex_unlock(&m->lock);
	return rm_handover_source(m, digest);
}

static int run_source(struct rdmamig *m)
{
	struct rm_policy policy;
	struct rm_policy_state ps = { 0 };
	enum rdmamig_switchover sw = RDMAMIG_SWITCH_NONE;
	bool logging = false;
	unsigned throttle = 0;
	int err;

	rm_policy_from_opts(&policy, &m->opts);
	err = m->ops->describe(m->vmm, &m->desc);
	if (err) {
		rm_err("migration: the VMM could not describe its VM: %s", rdmamig_strerror(err));
		return err;
	}
	err = check_desc(&m->desc);
	if (err)
		return err;
	pthread_mutex_lock(&m->lock);
	for (uint32_t r = 0; r < m->desc.nr_regions; r++)
		m->stats.ram_bytes += m->desc.regions[r].size;
	pthread_mutex_unlock(&m->lock);
	err = rm_ram_setup(m);
	if (err)
		return err;

	err = source_handshake(m);
	if (err)
		goto fail;
	pthread_mutex_lock(&m->lock);
	m->stats.setup_ns = rm_now_ns() - m->start_ns;
	pthread_mutex_unlock(&m->lock);

	err = m->ops->dirty_start(m->vmm);
	if (err) {
		rm_err("migration: starting dirty logging failed: %s", rdmamig_strerror(err));
		goto fail;
	}
	logging = true;
	m->state = RM_ST_SRC_ITERATE;
	rm_mig_set_stage(m, 1);

	for (unsigned it = 0;; it++) {
		struct rm_pass pass;
		long dirty;

		err = rm_ram_send_pass(m, it == 0, true, &pass);
		if (err)
			goto fail;
		dirty = rm_ram_sync(m);
		if (dirty < 0) {
			err = (int)dirty;
			goto fail;
		}
		record_iteration(m, it, &pass, (uint64_t)dirty, throttle);
		err = rm_mig_tick(m, true);
		if (err)
			goto fail;
		rm_info("migration: iteration %u sent %llu pages (%llu zero skipped) in %llu ms, %llu dirty now",
			it, (unsigned long long)pass.pages, (unsigned long long)pass.zero_pages,
			(unsigned long long)(pass.ns / 1000000), (unsigned long long)dirty);
		err = rm_mig_fault_step(m, "iteration-%u", it);
		if (err)
			goto fail;

		struct rm_policy_input in = {
			.iteration = it,
			.sent_bytes = pass.bytes,
			.duration_ns = pass.ns,
			.remaining_bytes = (uint64_t)dirty * m->desc.page_size,
			.elapsed_ns = rm_now_ns() - m->start_ns,
		};
		sw = rm_policy_decide(&policy, &ps, &in);
		if (sw != RDMAMIG_SWITCH_NONE)
			break;
		if (ps.throttle != throttle) {
			if (m->ops->throttle) {
				err = m->ops->throttle(m->vmm, ps.throttle);
				if (err) {
					rm_err("migration: throttling vCPUs to %u%% failed: %s", ps.throttle,
					       rdmamig_strerror(err));
					goto fail;
				}
				rm_info("migration: not converging; vCPUs throttled by %u%%", ps.throttle);
			}
			throttle = ps.throttle;
		}
		if (rm_mig_cancelled(m)) {
			err = RDMAMIG_E_ABORTED;
			goto fail;
		}
	}
	pthread_mutex_lock(&m->lock);
	m->stats.switchover = sw;
	pthread_mutex_unlock(&m->lock);
	rm_info("migration: switching over (%s)",
		sw == RDMAMIG_SWITCH_CONVERGED ? "converged" :
		sw == RDMAMIG_SWITCH_DEADLINE ? "deadline" : "iteration cap");

	err = stop_and_copy(m);
	if (err && rm_mig_on_fail(m->state) == RM_FAIL_RESUME)
		goto fail;
	/* Handed over, or in doubt: either way the guest stays paused here. */
	if (throttle && m->ops->throttle)
		m->ops->throttle(m->vmm, 0);
	rm_ram_dirty_stop(m);
	rm_mig_close_transport(m);
	if (err == RDMAMIG_E_INDOUBT)
		return err;	/* paused, said so; rdmamig_recover() settles it */
	if (err)
		return err;	/* recovery found no GO arrived: resumed, said so */
	rm_mig_set_stage(m, 3);
	rm_mig_tick(m, true);
	if (m->stats.verified < 0) {
		rm_err("migration: the destination's RAM digest differs from the source's");
		return RDMAMIG_E_VERIFY;
	}
	return 0;

fail:
	/* The destination never got GO: the source guest stays ours. */
	if (m->t)
		rm_tr_abort(m->t, err, rm_mig_cancelled(m) ? "cancelled by the source" : "source failed");
	rm_mig_close_transport(m);
	/* A destination that sent LOADED holds the loaded guest paused until
	 * it learns that no GO will come: tell it (one that refused has
	 * discarded already). */
	if (m->state == RM_ST_SRC_COMMITTED && err != RDMAMIG_E_REFUSED)
		rm_handover_abandon(m);
	if (logging) {
		if (throttle && m->ops->throttle)
			m->ops->throttle(m->vmm, 0);
		rm_ram_dirty_stop(m);
	}
	if (m->paused) {
		int rerr = m->ops->resume(m->vmm);

		if (rerr) {
			rm_err("migration: resuming the source guest after the failure failed: %s",
			       rdmamig_strerror(rerr));
		} else {
			m->paused = false;
			rm_info("migration: failed; the source guest runs on");
		}
	} else {
		rm_info("migration: failed before switchover; the source guest ran throughout");
	}
	return rm_mig_cancelled(m) ? RDMAMIG_E_ABORTED : err;
}

/* ----------------------------------------------------------- destination */

static int dest_accept(struct rdmamig *m)
{
	struct rm_transport *t;
	int err;

	err = rm_tr_listen(&m->topts, &m->listener);
	if (err) {
		rm_err("migration: cannot listen on %s port %s: %s", m->topts.addr ? m->topts.addr : "*",
		       m->topts.port, rdmamig_strerror(err));
		return err;
	}
	atomic_store(&m->listen_port, rm_tr_listener_port(m->listener));
	rm_info("migration: waiting for a source on port %d", rm_tr_listener_port(m->listener));
	do {
		err = rm_tr_accept(m->listener, &t);
	} while (err == -ETIMEDOUT && !rm_mig_cancelled(m));
	/* The listener stays open: a source whose handover answer is lost
	 * comes back to this address to ask (handover.c); the listener is
	 * closed once the outcome is settled. */
	if (err)
		return rm_mig_cancelled(m) ? RDMAMIG_E_ABORTED : err;
	rm_mig_set_transport(m, t);
	m->start_ns = rm_now_ns();
	return rm_mig_fault_step(m, "accepted");
}

/* The host's MemAvailable in bytes, or UINT64_MAX when /proc says nothing. */
static uint64_t mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	unsigned long long kib;
	char line[128];
	uint64_t v = UINT64_MAX;

	if (!f)
		return v;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1) {
			v = (uint64_t)kib << 10;
			break;
		}
	fclose(f);
	return v;
}

static int dest_setup(struct rdmamig *m, uint32_t *flags)
{
	struct rdmamig_vm_desc src;
	struct rm_msg msg;
	char why[RM_MIG_TEXT] = "";
	uint64_t ram = 0, cap;
	int err;

	m->state = RM_ST_DST_SETUP;
	err = rm_mig_expect(m, &msg, -1);
	if (err)
		return err;
	err = rm_mig_setup_decode(msg.data, msg.len, &src, flags, &m->migration_id, why, sizeof(why));
	rm_msg_free(&msg);
	if (err) {
		rm_err("migration: bad SETUP from the source: %s", why);
		rm_mig_refuse(m, err, why);
		return err;
	}
	cap = m->opts.max_mem ? m->opts.max_mem : mem_available();
	for (uint32_t r = 0; r < src.nr_regions; r++)
		ram += src.regions[r].size;	/* each <= 2^46: no overflow */
	if (ram > cap) {
		snprintf(why, sizeof(why),
			 "the source's guest has %" PRIu64 " MiB of RAM; this destination takes at most "
			 "%" PRIu64 " MiB (%s)", ram >> 20, cap >> 20,
			 m->opts.max_mem ? "max_mem" : "MemAvailable");
		rm_err("migration: refusing the source: %s", why);
		rm_mig_refuse(m, -E2BIG, why);
		return RDMAMIG_E_REFUSED;
	}
	if (m->ops->prepare) {
		char said[RM_MIG_TEXT];

		/* The VMM says why it refuses in its log: carry that to the
		 * source, not only the errno. */
		rm_log_capture(said, sizeof(said));
		err = m->ops->prepare(m->vmm, &src);
		rm_log_capture(NULL, 0);
		if (err) {
			snprintf(why, sizeof(why), "the destination VMM cannot host this VM: %.110s",
				 said[0] ? said : rdmamig_strerror(err));
			rm_err("migration: %s (%s)", why, rdmamig_strerror(err));
			rm_mig_refuse(m, err, why);
			return RDMAMIG_E_REFUSED;
		}
	}
	err = m->ops->describe(m->vmm, &m->desc);
	if (!err)
		err = check_desc(&m->desc);
	if (err) {
		rm_mig_refuse(m, err, "the destination VMM could not describe its VM");
		return err;
	}
	if (rm_mig_desc_compare(&src, &m->desc, why, sizeof(why))) {
		rm_err("migration: refusing the source, its VM does not match: %s", why);
		rm_mig_refuse(m, RDMAMIG_E_REFUSED, why);
		return RDMAMIG_E_REFUSED;
	}
	err = rm_mig_fault_step(m, "setup");
	if (err)
		return err;
	err = rm_tr_send(m->t, RM_MIG_SETUP_OK, NULL, 0);
	if (err)
		return err;
	err = exchange_layout(m);
	pthread_mutex_lock(&m->lock);
	m->stats.setup_ns = rm_now_ns() - m->start_ns;
	for (uint32_t r = 0; r < m->desc.nr_regions; r++)
		m->stats.ram_bytes += m->desc.regions[r].size;
	pthread_mutex_unlock(&m->lock);
	return err;
}

static int run_dest(struct rdmamig *m)
{
	struct rm_msg msg = { 0 }, state = { 0 };
	struct rm_mig_commit commit;
	uint32_t flags = 0;
	bool got_state = false;	/* a STATE of 0 bytes leaves state.data NULL */
	int err;

	err = dest_accept(m);
	if (err)
		goto out;
	err = dest_setup(m, &flags);
	if (err)
		goto out;
	rm_mig_set_stage(m, 1);

	/* RECEIVE: heartbeats, one STATE, then COMMIT (the state table). */
	for (;;) {
		/* As long as the source is alive: a paced or huge pass may
		 * send nothing here for long; the transport's keep-alives
		 * tell a quiet source from a dead one. */
		err = rm_mig_expect(m, &msg, -1);
		if (err) {
			if (err == RDMAMIG_E_PROTO)
				rm_mig_refuse(m, err, "a message outside its state");
			else if (err != RDMAMIG_E_REFUSED)
				rm_err("migration: lost the source while receiving: %s", rdmamig_strerror(err));
			goto out;
		}
		if (msg.type == RM_MIG_STATE) {
			if (got_state) {
				rm_err("migration: unexpected STATE: a second one from the source");
				rm_mig_refuse(m, RDMAMIG_E_PROTO, "a second STATE");
				err = RDMAMIG_E_PROTO;
				goto out;
			}
			got_state = true;
			state = msg;
			memset(&msg, 0, sizeof(msg));
			rm_mig_set_stage(m, 2);
			continue;
		}
		break;	/* COMMIT: the state table moved to LOADED */
	}
	if (msg.len != sizeof(commit)) {
		rm_err("migration: unexpected COMMIT of %zu bytes (expected %zu) from the source", msg.len,
		       sizeof(commit));
		rm_mig_refuse(m, RDMAMIG_E_PROTO, "malformed COMMIT");
		err = RDMAMIG_E_PROTO;
		goto out;
	}
	memcpy(&commit, msg.data, sizeof(commit));
	rm_msg_free(&msg);
	if (!got_state) {
		rm_err("migration: COMMIT before any STATE from the source");
		rm_mig_refuse(m, RDMAMIG_E_PROTO, "COMMIT before any STATE");
		err = RDMAMIG_E_PROTO;
		goto out;
	}
	err = rm_handover_dest(m, &commit, &state);
	rm_msg_free(&state);
	rm_tr_listener_close(m->listener);
	m->listener = NULL;
	return err;
out:
	rm_msg_free(&msg);
	rm_msg_free(&state);
	/* After a REFUSE the orderly close tells the source the rest; an
	 * ABORT could overtake the REFUSE and hide its reason. */
	if (err && m->t && !m->refused)
		rm_tr_abort(m->t, err, "destination failed");
	rm_mig_close_transport(m);
	rm_tr_listener_close(m->listener);
	m->listener = NULL;
	return err;
}

RM_EXPORT int rdmamig_run(rdmamig_t *m)
{
	int err;

	m->start_ns = rm_now_ns();
	err = m->opts.role == RDMAMIG_SOURCE ? run_source(m) : run_dest(m);
	pthread_mutex_lock(&m->lock);
	if (err || !m->stats.total_ns)
		m->stats.total_ns = rm_now_ns() - m->start_ns;
	pthread_mutex_unlock(&m->lock);
	return err;
}
