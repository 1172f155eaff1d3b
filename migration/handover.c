/*
 * migration/handover.c — the handover from COMMIT to a settled outcome, on
 * both sides, and the recovery of a lost answer (RECOVER/OUTCOME).  The
 * states and what each message and each failure does in them are the table
 * at the top of migration/protocol.h; rm_mig_expect() consults it for every
 * message.  This file decides which copy of the guest may run: the source
 * resumes only while GO has provably not left it, the destination runs the
 * guest only after GO, and where a lost link leaves that unknown both keep
 * the guest paused until one asks the other.
 *
 * It sees the VMM only through its ops table and the network only through
 * transport/transport.h, like the rest of the engine.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fault.h"
#include "common/log.h"
#include "migration/engine.h"

#define DEFAULT_RECOVER_MS 30000u
#define RETRY_NS 200000000ull		/* between a source's reconnects */
#define ABANDON_MS 2000			/* bound on telling a destination "no GO" */

static unsigned recover_ms(const struct rdmamig *m)
{
	return m->opts.recover_ms ? m->opts.recover_ms : DEFAULT_RECOVER_MS;
}

/* Source: the downtime and its split once the outcome is known. */
static void finish_downtime(struct rdmamig *m)
{
	uint64_t now = rm_now_ns(), parts;

	pthread_mutex_lock(&m->lock);
	m->stats.downtime_ns = now - m->t_pause;
	m->stats.total_ns = now - m->start_ns;	/* to the outcome, not teardown */
	parts = m->split_ns + m->stats.handover_ns + m->stats.go_ns + m->stats.recover_ns;
	m->stats.unaccounted_ns = m->stats.downtime_ns > parts ? m->stats.downtime_ns - parts : 0;
	pthread_mutex_unlock(&m->lock);
}

/* Source: one recovery exchange on a new connection.  OUTCOME_DESTINATION
 * or OUTCOME_SOURCE as the destination answered, or an error (nothing
 * learnt).  The state is the caller's again afterwards. */
static int recover_once(struct rdmamig *m, uint32_t flags, int timeout_ms)
{
	struct rm_transport_opts o = m->topts;
	struct rm_mig_recover req = {
		.migration_id = htole64(m->migration_id),
		.flags = htole32(flags),
	};
	struct rm_mig_outcome out;
	enum rm_mig_state was = m->state;
	struct rm_transport *t;
	struct rm_msg msg;
	int err;

	o.timeout_ms = timeout_ms;
	/* Telling a destination "no GO" follows a cancel as often as not: it
	 * must not be cancelled by it (its own bound is short). */
	if (flags & RM_MIG_RECOVER_ABANDON)
		o.cancel = NULL;
	err = rm_tr_connect(&o, &t);
	if (err)
		return err;
	rm_mig_set_transport(m, t);
	m->state = RM_ST_SRC_RECOVER;
	err = rm_tr_send(m->t, RM_MIG_RECOVER, &req, sizeof(req));
	if (!err)
		err = rm_mig_expect(m, &msg, timeout_ms);
	m->state = was;
	if (err) {
		rm_mig_close_transport(m);
		return err;
	}
	if (msg.len != sizeof(out)) {
		rm_err("migration: OUTCOME of %zu bytes, expected %zu", msg.len, sizeof(out));
		rm_msg_free(&msg);
		rm_mig_close_transport(m);
		return RDMAMIG_E_PROTO;
	}
	memcpy(&out, msg.data, sizeof(out));
	rm_msg_free(&msg);
	if (le64toh(out.migration_id) != m->migration_id) {
		rm_err("migration: the destination answered for migration %#llx, not %#llx",
		       (unsigned long long)le64toh(out.migration_id), (unsigned long long)m->migration_id);
		rm_mig_close_transport(m);
		return RDMAMIG_E_PROTO;
	}
	/* The orderly close (BYE) is what tells the destination that this
	 * side has its answer: only then does it settle. */
	rm_mig_close_transport(m);
	rm_info("migration: recovery: the destination %s GO and %s the guest",
		le32toh(out.got_go) ? "received" : "never received", le32toh(out.ran) ? "runs" : "never ran");
	return le32toh(out.ran) ? RDMAMIG_OUTCOME_DESTINATION : RDMAMIG_OUTCOME_SOURCE;
}

/* Source, in doubt: act on what the destination said. */
static int settle(struct rdmamig *m, int outcome)
{
	pthread_mutex_lock(&m->lock);
	m->stats.recoveries++;
	pthread_mutex_unlock(&m->lock);
	m->indoubt = false;
	m->state = RM_ST_SRC_DONE;
	finish_downtime(m);
	if (outcome == RDMAMIG_OUTCOME_DESTINATION) {
		rm_info("migration: the destination runs the guest; the copy here is released");
		return RDMAMIG_OUTCOME_DESTINATION;
	}
	/* The destination never ran it and has discarded it: ours again. */
	int err = m->ops->resume(m->vmm);

	if (err) {
		rm_err("migration: the destination never ran the guest, but resuming it here failed: %s",
		       rdmamig_strerror(err));
		return err;
	}
	m->paused = false;
	rm_info("migration: the destination never ran the guest; the source guest runs on");
	return RDMAMIG_OUTCOME_SOURCE;
}

/* Source, GO sent, answer lost: ask again for up to recover_ms.  Never
 * resumes on a timeout or a cancel. */
static int recover_loop(struct rdmamig *m, int first_err)
{
	uint64_t t0 = rm_now_ns(), end = t0 + recover_ms(m) * 1000000ull;
	int timeout = m->topts.timeout_ms < (int)recover_ms(m) ? m->topts.timeout_ms : (int)recover_ms(m);
	int err = rm_mig_fault(m, "recover");

	rm_warn("migration: GO was sent and the answer is lost (%s): the guest stays paused here; "
		"asking the destination for up to %u ms", rdmamig_strerror(first_err), recover_ms(m));
	while (!err && !rm_mig_cancelled(m)) {
		int ret = recover_once(m, 0, timeout);

		if (ret >= 0) {
			pthread_mutex_lock(&m->lock);
			m->stats.recover_ns = rm_now_ns() - t0;
			pthread_mutex_unlock(&m->lock);
			ret = settle(m, ret);
			return ret == RDMAMIG_OUTCOME_DESTINATION ? 0 : ret == RDMAMIG_OUTCOME_SOURCE ? first_err : ret;
		}
		if (rm_now_ns() >= end)
			break;
		for (uint64_t t = rm_now_ns() + RETRY_NS; rm_now_ns() < t && !rm_mig_cancelled(m);)
			usleep(10000);
	}
	pthread_mutex_lock(&m->lock);
	m->stats.recover_ns = rm_now_ns() - t0;
	pthread_mutex_unlock(&m->lock);
	finish_downtime(m);
	rm_err("migration: the outcome is unknown: the guest stays PAUSED here and must not be resumed "
	       "by hand; rdmamig_recover() (rdmamig --recover) asks the destination again");
	return RDMAMIG_E_INDOUBT;
}

int rm_handover_source(struct rdmamig *m, uint64_t digest)
{
	struct rm_mig_loaded loaded;
	struct rm_mig_resumed resumed;
	struct rm_msg msg;
	uint64_t t0 = rm_now_ns(), t1;
	int err, fault;

	/* COMMITTED: LOADED, or a failure, which resumes this side. */
	err = rm_mig_expect(m, &msg, -1);
	if (err)
		return err;
	if (msg.len != sizeof(loaded)) {
		rm_err("migration: LOADED of %zu bytes, expected %zu", msg.len, sizeof(loaded));
		rm_msg_free(&msg);
		m->state = RM_ST_SRC_COMMITTED;
		return RDMAMIG_E_PROTO;
	}
	memcpy(&loaded, msg.data, sizeof(loaded));
	rm_msg_free(&msg);
	/* rm_mig_expect() moved on to GO_SENT; GO has not left yet. */
	m->state = RM_ST_SRC_COMMITTED;
	pthread_mutex_lock(&m->lock);
	m->stats.handover_ns = rm_now_ns() - t0;
	m->stats.load_ns = le64toh(loaded.load_ns);
	m->stats.verify_ns += le64toh(loaded.verify_ns);
	if (m->opts.verify)
		m->stats.verified = le64toh(loaded.digest) == digest ? 1 : -1;
	pthread_mutex_unlock(&m->lock);
	if (m->stats.verified < 0) {
		rm_err("migration: the destination's RAM digest differs from the source's: no GO");
		return RDMAMIG_E_VERIFY;
	}

	fault = rm_mig_fault(m, "send-GO");
	if (fault == RM_FAULT_CUT) {
		rm_mig_cut(m);
		return -ECONNRESET;
	}
	if (fault < 0)
		return fault;
	if (rm_mig_cancelled(m))
		return RDMAMIG_E_ABORTED;	/* the last moment a cancel is honoured */
	/* A link already known to be broken (the destination died, the
	 * connection was reset) carries nothing: GO provably never leaves,
	 * so this side may still resume.  Sending into it would put the
	 * source in doubt with nobody left to ask. */
	err = rm_tr_recv(m->t, &msg, 0);
	if (err > 0) {
		rm_err("migration: %s after LOADED, before GO: a protocol error; no GO sent",
		       rm_mig_type_name(msg.type));
		rm_msg_free(&msg);
		return RDMAMIG_E_PROTO;
	}
	if (err < 0) {
		rm_err("migration: the link to the destination broke before GO (%s): no GO sent",
		       rdmamig_strerror(err));
		return err;
	}

	/* From here this side never resumes on its own: GO may be on the
	 * wire even when the send reports an error. */
	m->state = RM_ST_SRC_GO_SENT;
	m->indoubt = true;
	t1 = rm_now_ns();
	if (fault == RM_FAULT_DROP) {
		rm_mig_cut(m);
		err = -ECONNRESET;
	} else {
		err = rm_tr_send(m->t, RM_MIG_GO, NULL, 0);
	}
	if (!err)
		err = rm_mig_expect(m, &msg, -1);
	if (!err && msg.len != sizeof(resumed)) {
		rm_err("migration: RESUMED of %zu bytes, expected %zu", msg.len, sizeof(resumed));
		rm_msg_free(&msg);
		m->state = RM_ST_SRC_GO_SENT;
		err = RDMAMIG_E_PROTO;
	}
	if (err) {
		pthread_mutex_lock(&m->lock);
		m->stats.go_ns = rm_now_ns() - t1;
		pthread_mutex_unlock(&m->lock);
		rm_mig_close_transport(m);
		return recover_loop(m, err);
	}
	memcpy(&resumed, msg.data, sizeof(resumed));
	rm_msg_free(&msg);
	m->indoubt = false;
	pthread_mutex_lock(&m->lock);
	m->stats.go_ns = rm_now_ns() - t1;
	m->stats.resume_ns = le64toh(resumed.resume_ns);
	pthread_mutex_unlock(&m->lock);
	finish_downtime(m);
	return 0;
}

void rm_handover_abandon(struct rdmamig *m)
{
	int ret;

	if (!m->migration_id)
		return;
	ret = recover_once(m, RM_MIG_RECOVER_ABANDON, ABANDON_MS);
	if (ret == RDMAMIG_OUTCOME_SOURCE)
		rm_info("migration: the destination discarded the loaded guest");
	else if (ret == RDMAMIG_OUTCOME_DESTINATION)
		/* It ran a guest it never got GO for: it broke the protocol. */
		rm_err("migration: the destination says it runs the guest without GO: it broke the protocol");
	else
		rm_dbg("migration: could not tell the destination to discard (%s); it will after its "
			 "recovery window", rdmamig_strerror(ret));
}

RM_EXPORT int rdmamig_recover(rdmamig_t *m)
{
	int ret;

	if (!m || m->opts.role != RDMAMIG_SOURCE || !m->indoubt)
		return -EINVAL;
	/* The operator asks explicitly: an earlier cancel does not stop it. */
	atomic_store(&m->cancelled, 0);
	ret = recover_once(m, 0, m->topts.timeout_ms);
	if (ret < 0) {
		rm_err("migration: recovery: the destination could not be asked (%s); the guest stays PAUSED",
		       rdmamig_strerror(ret));
		return RDMAMIG_E_INDOUBT;
	}
	return settle(m, ret);
}

/* ----------------------------------------------------------- destination */

/* Destination, the outcome unknown to the source: answer RECOVER on the
 * listener for 2 * recover_ms, until a source has its answer (it closes in
 * order after OUTCOME).  0 when the guest runs here; otherwise the loaded
 * guest is discarded and first_err returned. */
static int serve_recovery(struct rdmamig *m, int first_err)
{
	uint64_t end = rm_now_ns() + 2ull * recover_ms(m) * 1000000ull;
	bool settled = false;

	rm_warn("migration: lost the source after %s (%s): %s; answering a recovering source for %u ms",
		m->got_go ? "GO" : "LOADED", rdmamig_strerror(first_err),
		m->ran ? "the guest runs here" : "the loaded guest stays paused here", 2 * recover_ms(m));
	while (!settled && m->listener && rm_now_ns() < end && !rm_mig_cancelled(m)) {
		struct rm_mig_recover req = { 0 };
		struct rm_mig_outcome out;
		struct rm_transport *t;
		struct rm_msg msg = { 0 };
		int err = rm_tr_accept(m->listener, &t);

		if (err) {
			if (err != -ETIMEDOUT)
				usleep(100000);	/* a failed handshake: do not spin */
			continue;
		}
		rm_mig_set_transport(m, t);
		m->state = RM_ST_DST_RECOVER;
		err = rm_mig_expect(m, &msg, m->topts.timeout_ms);
		if (!err && (msg.len != sizeof(req) ||
			     (memcpy(&req, msg.data, sizeof(req)), le64toh(req.migration_id) != m->migration_id))) {
			rm_warn("migration: a RECOVER for another migration: refused");
			rm_mig_refuse(m, RDMAMIG_E_REFUSED, "no such migration here");
			err = RDMAMIG_E_REFUSED;
		}
		rm_msg_free(&msg);
		if (!err) {
			out = (struct rm_mig_outcome){
				.migration_id = htole64(m->migration_id),
				.got_go = htole32(m->got_go),
				.ran = htole32(m->ran),
			};
			err = rm_tr_send(m->t, RM_MIG_OUTCOME, &out, sizeof(out));
			if (!err && (le32toh(req.flags) & RM_MIG_RECOVER_ABANDON))
				rm_info("migration: the source resumed its guest without sending GO");
			/* The source's BYE says it has the answer; anything
			 * else leaves it unknown whether OUTCOME arrived. */
			if (!err) {
				int ret = rm_tr_recv(m->t, &msg, m->topts.timeout_ms);

				if (ret == -EPIPE)
					settled = true;
				else if (ret > 0)
					rm_msg_free(&msg);
			}
		}
		rm_mig_close_transport(m);
	}
	if (m->ran) {
		if (!settled)
			rm_warn("migration: no source asked for the outcome: the guest runs here; the source's "
				"paused copy is stale and must not be resumed");
		return 0;
	}
	if (settled)
		rm_info("migration: the source runs the guest; discarding the loaded copy here");
	else
		rm_err("migration: no source asked within %u ms: discarding the loaded guest, which never ran "
		       "here; a source that sent GO stays paused until its operator decides",
		       2 * recover_ms(m));
	return first_err;
}

int rm_handover_dest(struct rdmamig *m, const struct rm_mig_commit *commit, const struct rm_msg *state)
{
	struct rm_mig_loaded loaded = { 0 };
	struct rm_mig_resumed resumed;
	struct rm_msg msg;
	uint64_t t0 = rm_now_ns(), t1, digest = 0;
	char why[RM_MIG_TEXT];
	int err, fault;

	/* Still discarding on failure until LOADED leaves. */
	m->state = RM_ST_DST_RECEIVE;
	/* COMMIT comes after the source's last fence: from here no write of
	 * the source may land, so it can touch neither the state loaded nor
	 * the digest, and the guest never runs on RAM a peer can write. */
	err = rm_tr_seal(m->t);
	if (err) {
		snprintf(why, sizeof(why), "the destination cannot revoke the source's access to RAM: %s",
			 rdmamig_strerror(err));
		rm_err("migration: %s", why);
		rm_mig_refuse(m, err, why);
		goto discard;
	}
	if (le64toh(commit->state_len) != state->len) {
		rm_err("migration: COMMIT says %llu bytes of state, %zu arrived",
		       (unsigned long long)le64toh(commit->state_len), state->len);
		rm_mig_refuse(m, RDMAMIG_E_PROTO, "device state length mismatch");
		err = RDMAMIG_E_PROTO;
		goto discard;
	}
	if (le32toh(commit->flags) & RM_MIG_F_VERIFY) {
		digest = rm_ram_digest(&m->desc);
		pthread_mutex_lock(&m->lock);
		m->stats.verify_ns = rm_now_ns() - t0;
		m->stats.digest = digest;
		m->stats.verified = digest == le64toh(commit->digest) ? 1 : -1;
		pthread_mutex_unlock(&m->lock);
		if (digest != le64toh(commit->digest)) {
			rm_err("migration: RAM digest %#llx differs from the source's %#llx: not running the guest",
			       (unsigned long long)digest, (unsigned long long)le64toh(commit->digest));
			rm_mig_refuse(m, RDMAMIG_E_VERIFY, "RAM digest mismatch at the destination");
			err = RDMAMIG_E_VERIFY;
			goto discard;
		}
	}
	err = m->ops->load_state(m->vmm, state->data, state->len);
	if (err) {
		snprintf(why, sizeof(why), "the destination cannot load the device state: %s",
			 rdmamig_strerror(err));
		rm_err("migration: %s", why);
		rm_mig_refuse(m, err, why);
		goto discard;
	}
	loaded = (struct rm_mig_loaded){
		.load_ns = htole64(rm_now_ns() - t0),
		.digest = htole64(digest),
		.verify_ns = htole64(m->stats.verify_ns),
	};
	pthread_mutex_lock(&m->lock);
	m->stats.load_ns = rm_now_ns() - t0;
	m->stats.state_bytes = state->len;
	pthread_mutex_unlock(&m->lock);

	fault = rm_mig_fault(m, "send-LOADED");
	if (fault == RM_FAULT_CUT) {
		rm_mig_cut(m);
		err = -ECONNRESET;
		goto discard;
	}
	if (fault < 0) {
		err = fault;
		goto discard;
	}
	/* LOADED may be on the wire from here, and GO after it. */
	m->state = RM_ST_DST_LOADED;
	if (fault == RM_FAULT_DROP) {
		rm_mig_cut(m);
		err = -ECONNRESET;
	} else {
		err = rm_tr_send(m->t, RM_MIG_LOADED, &loaded, sizeof(loaded));
	}
	if (!err)
		err = rm_mig_expect(m, &msg, -1);
	if (err) {
		if (m->t)
			rm_tr_abort(m->t, err, "destination lost the handover");
		rm_mig_close_transport(m);
		return serve_recovery(m, err);
	}
	rm_msg_free(&msg);
	m->got_go = true;

	/* RUNNING: the source has given its copy up. */
	t1 = rm_now_ns();
	err = m->ops->resume(m->vmm);
	if (err) {
		/* Nothing runs anywhere: the source must take it back, and
		 * learns so from OUTCOME (ran 0). */
		rm_err("migration: starting the guest failed: %s", rdmamig_strerror(err));
		rm_tr_abort(m->t, err, "the destination could not start the guest");
		rm_mig_close_transport(m);
		return serve_recovery(m, err);
	}
	m->ran = true;
	resumed.resume_ns = htole64(rm_now_ns() - t1);
	pthread_mutex_lock(&m->lock);
	m->stats.resume_ns = rm_now_ns() - t1;
	m->stats.total_ns = rm_now_ns() - m->start_ns;
	pthread_mutex_unlock(&m->lock);
	fault = rm_mig_fault(m, "send-RESUMED");
	if (fault == RM_FAULT_CUT || fault == RM_FAULT_DROP) {
		rm_mig_cut(m);
		err = -ECONNRESET;
	} else {
		err = rm_tr_send(m->t, RM_MIG_RESUMED, &resumed, sizeof(resumed));
	}
	/* The acknowledgment first: the source's guest is paused until it
	 * arrives.  Then the progress callback. */
	rm_mig_set_stage(m, 3);
	rm_mig_tick(m, true);
	/* The source's orderly close says RESUMED arrived. */
	while (!err) {
		err = rm_tr_recv(m->t, &msg, -1);
		if (err >= 0) {
			rm_msg_free(&msg);
			err = 0;
		}
	}
	if (err == -EPIPE) {
		rm_mig_close_transport(m);
		return 0;
	}
	rm_mig_close_transport(m);
	return serve_recovery(m, err);

discard:
	/* After a REFUSE the orderly close tells the source the rest; an
	 * ABORT could overtake the REFUSE and hide its reason. */
	if (m->t && !m->refused)
		rm_tr_abort(m->t, err, "destination failed");
	rm_mig_close_transport(m);
	return err;
}
