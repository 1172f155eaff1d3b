/*
 * transport/ctrl-live.c — liveness: a keep-alive on every channel that has
 * been quiet for a while, and failure once the peer has been silent on a
 * channel for timeout_ms.  Silence is bounded, never the length of a
 * migration.  A thread per connection runs the checks between the owner's
 * calls; backends report traffic with rm_ctrl_sent() / rm_ctrl_heard().
 * Also what each channel last carried, for the error of a handshake that
 * timed out (rm_ctrl_describe).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/priv.h"

#define LIVE_TICK_MAX_NS 50000000ull	/* the liveness thread's round, at most */
#define LIVE_TICK_MIN_NS 5000000ull

/* ---- liveness ---- */

void rm_ctrl_sent(struct rm_transport *t, unsigned chan)
{
	atomic_store(&t->ctrl.last_tx[chan], rm_now_ns());
}

void rm_ctrl_heard(struct rm_transport *t, unsigned chan)
{
	atomic_store(&t->ctrl.last_rx[chan], rm_now_ns());
}

void rm_ctrl_tx_note(struct rm_transport *t, unsigned chan, uint16_t type)
{
	atomic_store(&t->ctrl.tx_type[chan], type);
	atomic_store(&t->ctrl.tx_at[chan], rm_now_ns());
	atomic_fetch_add(&t->ctrl.tx_n[chan], 1);
}

void rm_ctrl_rx_note(struct rm_transport *t, unsigned chan, uint16_t type)
{
	atomic_store(&t->ctrl.rx_type[chan], type);
	atomic_store(&t->ctrl.rx_at[chan], rm_now_ns());
	atomic_fetch_add(&t->ctrl.rx_n[chan], 1);
}

/* "3 (last AUTH 12 ms ago)" or "none"; appended at buf + *off. */
static void describe_dir(char *buf, size_t n, size_t *off, uint32_t count, uint16_t type,
			 uint64_t at, uint64_t now)
{
	int w;

	if (*off >= n)
		return;
	if (!count)
		w = snprintf(buf + *off, n - *off, "none");
	else
		w = snprintf(buf + *off, n - *off, "%u (last %s %llu ms ago)", count,
			     rm_wire_type_name(type),
			     (unsigned long long)(now > at ? (now - at) / 1000000 : 0));
	*off += w > 0 ? (size_t)w : 0;
}

const char *rm_ctrl_describe(struct rm_transport *t, char *buf, size_t n)
{
	struct rm_ctrl *q = &t->ctrl;
	uint64_t now = rm_now_ns();
	unsigned sent, got;
	uint32_t joined;
	size_t off = 0;
	int w;

	if (!n)
		return buf;
	buf[0] = 0;
	pthread_mutex_lock(&q->lock);
	sent = q->auth_sent;
	got = q->auth_got;
	joined = q->joined;
	pthread_mutex_unlock(&q->lock);
	w = snprintf(buf, n, "AUTH step sent %u, taken %u, channels joined %#x", sent, got, joined);
	off = w > 0 ? (size_t)w : 0;
	for (unsigned i = 0; i < t->nchan && off < n; i++) {
		w = snprintf(buf + off, n - off, "; channel %u: sent ", i);
		off += w > 0 ? (size_t)w : 0;
		describe_dir(buf, n, &off, atomic_load(&q->tx_n[i]), atomic_load(&q->tx_type[i]),
			     atomic_load(&q->tx_at[i]), now);
		if (off < n) {
			w = snprintf(buf + off, n - off, ", received ");
			off += w > 0 ? (size_t)w : 0;
		}
		describe_dir(buf, n, &off, atomic_load(&q->rx_n[i]), atomic_load(&q->rx_type[i]),
			     atomic_load(&q->rx_at[i]), now);
	}
	if (t->ops->describe && off + 3 < n) {
		memcpy(buf + off, "; ", 3);
		off += 2;
		t->ops->describe(t, buf + off, n - off);
	}
	return buf;
}

/* A quarter of our own timeout at most, so a peer with the same timeout
 * has a 4x margin; RM_WIRE_KEEPALIVE_MS at most, so any peer timeout of
 * 4x that holds too, whatever ours is. */
static uint64_t keepalive_ns(const struct rm_transport *t)
{
	uint64_t q = (uint64_t)t->opts.timeout_ms * 1000000ull / 4;

	return q < RM_WIRE_KEEPALIVE_MS * 1000000ull ? q : RM_WIRE_KEEPALIVE_MS * 1000000ull;
}

static bool peer_said_bye(struct rm_transport *t)
{
	bool bye;

	pthread_mutex_lock(&t->ctrl.lock);
	bye = t->ctrl.peer_bye;
	pthread_mutex_unlock(&t->ctrl.lock);
	return bye;
}

/* With a key, a channel other than 0 carries nothing before this side's
 * proof that it belongs to the session (AUTH step 5 or 6): the peer would
 * refuse it.  Backends that send keep-alives from their progress loop
 * (RDMA) reach here during the handshake. */
static bool may_send(struct rm_transport *t, unsigned chan)
{
	bool ok;

	if (!chan || !t->opts.psk_len)
		return true;
	pthread_mutex_lock(&t->ctrl.lock);
	ok = t->ctrl.join_posted & (1u << chan);
	pthread_mutex_unlock(&t->ctrl.lock);
	return ok;
}

bool rm_ctrl_keepalive_due(struct rm_transport *t, unsigned chan, uint64_t now)
{
	uint64_t sent = atomic_load(&t->ctrl.last_tx[chan]);

	return now > sent && now - sent >= keepalive_ns(t) && !peer_said_bye(t) &&
	       may_send(t, chan);
}

int rm_ctrl_live(struct rm_transport *t, uint64_t now)
{
	struct rm_ctrl *q = &t->ctrl;
	uint64_t silent = (uint64_t)t->opts.timeout_ms * 1000000ull;
	int err = rm_tr_check(t);

	if (err)
		return err;
	if (peer_said_bye(t))
		return 0;	/* the peer has finished: nothing more will come */
	for (unsigned i = 0; i < t->nchan; i++) {
		uint64_t heard = atomic_load(&q->last_rx[i]);

		if (now > heard && now - heard >= silent) {
			char what[96];

			snprintf(what, sizeof(what), "channel %u: nothing from %s for %llu ms", i,
				 rm_ctrl_peer_name(t), (unsigned long long)((now - heard) / 1000000));
			return rm_tr_fail(t, -ETIMEDOUT, what);
		}
	}
	for (unsigned i = 0; i < t->nchan; i++) {
		if (!rm_ctrl_keepalive_due(t, i, now))
			continue;
		err = t->ops->post(t, i, RM_WIRE_KEEPALIVE, 0, NULL, 0, NULL, 0, RM_NOW);
		if (!err)
			atomic_store(&q->last_tx[i], now);
		else if (err != -EAGAIN)
			return rm_tr_fail(t, err, "sending a keep-alive");
	}
	return 0;
}

static void *live_thread(void *arg)
{
	struct rm_transport *t = arg;
	struct rm_ctrl *q = &t->ctrl;
	uint64_t tick = keepalive_ns(t) / 5;

	if (tick > LIVE_TICK_MAX_NS)
		tick = LIVE_TICK_MAX_NS;
	if (tick < LIVE_TICK_MIN_NS)
		tick = LIVE_TICK_MIN_NS;
	pthread_mutex_lock(&q->lock);
	while (!q->live_stop) {
		struct timespec ts = rm_abstime_in(tick);
		int err;

		pthread_cond_timedwait(&q->live_cond, &q->lock, &ts);
		if (q->live_stop)
			break;
		pthread_mutex_unlock(&q->lock);
		/* Take in what arrived (RDMA) while the owner may be away: the
		 * peer's keep-alives, credits, a DISCONNECT. */
		if (t->ops->pump)
			t->ops->pump(t, RM_NOW);
		err = rm_ctrl_live(t, rm_now_ns());
		pthread_mutex_lock(&q->lock);
		if (err)
			break;	/* failed or cancelled: the owner sees it */
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int rm_ctrl_live_start(struct rm_transport *t)
{
	struct rm_ctrl *q = &t->ctrl;
	uint64_t now = rm_now_ns();
	int err;

	for (unsigned i = 0; i < t->nchan; i++) {
		atomic_store(&q->last_tx[i], now);
		atomic_store(&q->last_rx[i], now);
	}
	q->live_stop = false;
	err = pthread_create(&q->live, NULL, live_thread, t);
	if (err)
		return -err;
	q->live_started = true;
	return 0;
}

void rm_ctrl_live_stop(struct rm_transport *t)
{
	struct rm_ctrl *q = &t->ctrl;

	if (!q->live_started)
		return;
	pthread_mutex_lock(&q->lock);
	q->live_stop = true;
	pthread_cond_broadcast(&q->live_cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->live, NULL);
	q->live_started = false;
}
