/*
 * transport/ctrl-auth.c — the pre-shared-key challenge–response of the
 * handshake (ctrl.h, wire.h's AUTH): both sides send a nonce, then each
 * proves the key with an HMAC-SHA256 over its role, the session, the channel
 * count and both nonces; then every other channel proves that it belongs
 * to that session (steps 5 and 6).  The answers are checked on the receive
 * path (ctrl.c's rx_auth), so this file only drives the exchange.
 */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <string.h>

#include "transport/priv.h"

/* ---- authentication ---- */

/* What both MACs bind after their label (and role): session, channel count
 * and both sides' nonces.  Returns the byte after them. */
static uint8_t *put_session(uint8_t *p, const struct rm_transport *t)
{
	__le64 session = rm_wire_put64(t->session);
	__le16 nchan = rm_wire_put16((uint16_t)t->nchan);

	memcpy(p, &session, 8);
	p += 8;
	memcpy(p, &nchan, 2);
	p += 2;
	memcpy(p, t->ctrl.nonce_src, RM_WIRE_NONCE);
	p += RM_WIRE_NONCE;
	memcpy(p, t->ctrl.nonce_dst, RM_WIRE_NONCE);
	return p + RM_WIRE_NONCE;
}

int rm_ctrl_auth_mac(const struct rm_transport *t, char role, uint8_t mac[RM_WIRE_MAC])
{
	static const char label[] = RM_WIRE_AUTH_LABEL;
	uint8_t msg[sizeof(label) + 1 + 8 + 2 + 2 * RM_WIRE_NONCE], *p = msg;
	unsigned mlen = 0;

	/* label (with its NUL), role, session, nchan, nonce_s, nonce_d */
	memcpy(p, label, sizeof(label));
	p += sizeof(label);
	*p++ = (uint8_t)role;
	put_session(p, t);
	if (!HMAC(EVP_sha256(), t->opts.psk, (int)t->opts.psk_len, msg, sizeof(msg), mac, &mlen) ||
	    mlen != RM_WIRE_MAC)
		return -ENOMEM;
	return 0;
}

int rm_ctrl_join_mac(const struct rm_transport *t, char role, unsigned chan,
		     uint8_t mac[RM_WIRE_MAC])
{
	static const char slabel[] = RM_WIRE_SESSION_LABEL, jlabel[] = RM_WIRE_JOIN_LABEL;
	uint8_t smsg[sizeof(slabel) + 8 + 2 + 2 * RM_WIRE_NONCE], *p = smsg;
	uint8_t jmsg[sizeof(jlabel) + 1 + 2], key[RM_WIRE_MAC];
	__le16 c = rm_wire_put16((uint16_t)chan);
	unsigned klen = 0, mlen = 0;
	int err = 0;

	/* The session key: label, session, nchan, nonce_s, nonce_d. */
	memcpy(p, slabel, sizeof(slabel));
	put_session(p + sizeof(slabel), t);
	/* The channel's proof under it: label, role, channel. */
	memcpy(jmsg, jlabel, sizeof(jlabel));
	jmsg[sizeof(jlabel)] = (uint8_t)role;
	memcpy(jmsg + sizeof(jlabel) + 1, &c, 2);
	if (!HMAC(EVP_sha256(), t->opts.psk, (int)t->opts.psk_len, smsg, sizeof(smsg), key, &klen) ||
	    klen != sizeof(key) ||
	    !HMAC(EVP_sha256(), key, sizeof(key), jmsg, sizeof(jmsg), mac, &mlen) || mlen != RM_WIRE_MAC)
		err = -ENOMEM;
	OPENSSL_cleanse(key, sizeof(key));
	return err;
}

static bool never(struct rm_transport *t, void *arg)
{
	return false;
}

struct auth_wait {
	unsigned step;		/* wait for the peer's step ... */
	bool verdict;		/* ... or for its proof's verdict */
};

static bool auth_progress(struct rm_transport *t, void *arg)
{
	const struct auth_wait *w = arg;

	if (w->verdict)
		return t->ctrl.authed || t->ctrl.auth_bad;
	return t->ctrl.auth_got >= w->step;
}

/* Send our step; a nonce is drawn fresh for it, a proof computed. */
static int auth_send(struct rm_transport *t, unsigned step, uint64_t deadline)
{
	struct rm_wire_auth a = { .step = rm_wire_put32(step) };
	bool src = t->role == RM_ROLE_SOURCE;
	int err = 0;

	pthread_mutex_lock(&t->ctrl.lock);
	if (step <= RM_AUTH_NONCE_DST) {
		uint8_t *mine = src ? t->ctrl.nonce_src : t->ctrl.nonce_dst;

		if (RAND_bytes(mine, RM_WIRE_NONCE) != 1)
			err = -EIO;
		memcpy(a.nonce, mine, RM_WIRE_NONCE);
	} else if (rm_ctrl_auth_mac(t, src ? 'S' : 'D', a.mac)) {
		err = -ENOMEM;
	}
	/* Recorded before the post: the peer's answer may arrive before
	 * post returns, and the receive path checks the order by it. */
	if (!err)
		t->ctrl.auth_sent = step;
	pthread_mutex_unlock(&t->ctrl.lock);
	if (!err)
		err = t->ops->post(t, 0, RM_WIRE_AUTH, 0, &a, sizeof(a), NULL, 0, deadline);
	OPENSSL_cleanse(&a, sizeof(a));
	return err;
}

static int auth_wait(struct rm_transport *t, unsigned step, bool verdict, uint64_t deadline)
{
	struct auth_wait w = { .step = step, .verdict = verdict };
	int ret = rm_ctrl_wait_for(t, deadline, auth_progress, &w);

	return ret < 0 ? ret : ret ? 0 : -ETIMEDOUT;
}

/* Every channel but 0, as a mask of joined. */
static uint32_t join_all(const struct rm_transport *t)
{
	return ((1u << t->nchan) - 1) & ~1u;
}

static bool all_joined(struct rm_transport *t, void *arg)
{
	return (t->ctrl.joined & join_all(t)) == join_all(t);
}

/* Our proof on every channel but 0 (step 5 or 6), then, on the source,
 * the destination's on each; the destination sends its own only once the
 * source's all checked out (the receive path checks them). */
static int auth_join(struct rm_transport *t, uint64_t deadline)
{
	bool src = t->role == RM_ROLE_SOURCE;
	int err = 0;

	if (!src) {
		err = rm_ctrl_wait_for(t, deadline, all_joined, NULL);
		if (err <= 0)
			return err < 0 ? err : -ETIMEDOUT;
		err = 0;
	}
	for (unsigned c = 1; c < t->nchan && !err; c++) {
		struct rm_wire_auth a = { .step = rm_wire_put32(src ? RM_AUTH_JOIN_SRC
								    : RM_AUTH_JOIN_DST) };

		pthread_mutex_lock(&t->ctrl.lock);
		err = rm_ctrl_join_mac(t, src ? 'S' : 'D', c, a.mac);
		t->ctrl.join_sent |= 1u << c;	/* before the answer can come */
		pthread_mutex_unlock(&t->ctrl.lock);
		if (!err)
			err = t->ops->post(t, c, RM_WIRE_AUTH, 0, &a, sizeof(a), NULL, 0, deadline);
		if (!err) {
			pthread_mutex_lock(&t->ctrl.lock);
			t->ctrl.join_posted |= 1u << c;
			pthread_mutex_unlock(&t->ctrl.lock);
		}
		OPENSSL_cleanse(&a, sizeof(a));
	}
	if (!err && src) {
		err = rm_ctrl_wait_for(t, deadline, all_joined, NULL);
		err = err < 0 ? err : err ? 0 : -ETIMEDOUT;
	}
	return err;
}

/* Has the peer's proof checked out?  Takes the lock for the verdict. */
static bool auth_ok(struct rm_transport *t)
{
	bool ok;

	pthread_mutex_lock(&t->ctrl.lock);
	ok = t->ctrl.authed;
	pthread_mutex_unlock(&t->ctrl.lock);
	return ok;
}

/*
 * Log an exchange that failed other than by a wrong proof: how long it
 * waited of the time it had (the source's time is what its connect left),
 * and what each channel last carried both ways — so that the log tells a
 * message lost on the way (sent here, the peer's counters never moved) from
 * one never sent (the peer's wait is on it too), and a slow connect from a
 * silent peer.
 */
static void auth_failed(struct rm_transport *t, enum rdmamig_log_level level, const char *what,
			int err, uint64_t t0, uint64_t deadline)
{
	uint64_t now = rm_now_ns();
	char d[768];

	rm_log(level, "transport %s: %s: %s after %llu ms, of %llu ms it had: %s", t->ops->name, what,
	       rdmamig_strerror(err), (unsigned long long)((now - t0) / 1000000),
	       (unsigned long long)(deadline > t0 ? (deadline - t0) / 1000000 : 0),
	       rm_ctrl_describe(t, d, sizeof(d)));
}

int rm_ctrl_auth(struct rm_transport *t, uint64_t deadline)
{
	struct rm_wire_refuse_body rf;
	uint64_t t0 = rm_now_ns();
	int err;

	if (!t->opts.psk_len)
		return 0;
	if (t->role == RM_ROLE_SOURCE) {
		err = auth_send(t, RM_AUTH_NONCE_SRC, deadline);
		if (!err)
			err = auth_wait(t, RM_AUTH_NONCE_DST, false, deadline);
		if (!err)
			err = auth_send(t, RM_AUTH_PROOF_SRC, deadline);
		if (!err)
			err = auth_wait(t, 0, true, deadline);
		if (err) {
			if (err != RDMAMIG_E_AUTH)
				auth_failed(t, RDMAMIG_LOG_ERR, "authenticating the destination", err, t0,
					    deadline);
			return err;
		}
		if (!auth_ok(t)) {
			rm_err("transport %s: the destination did not prove the pre-shared key: %s",
			       t->ops->name, RM_AUTH_HINT);
			return RDMAMIG_E_AUTH;
		}
		err = auth_join(t, deadline);
		if (err)
			auth_failed(t, RDMAMIG_LOG_ERR, "joining its other channels to the session", err,
				    t0, deadline);
		return err;
	}
	err = auth_wait(t, RM_AUTH_NONCE_SRC, false, deadline);
	if (!err)
		err = auth_send(t, RM_AUTH_NONCE_DST, deadline);
	if (!err)
		err = auth_wait(t, 0, true, deadline);
	if (err) {
		auth_failed(t, RDMAMIG_LOG_WARN, "dropping a source that did not authenticate", err, t0,
			    deadline);
		return err;
	}
	if (!auth_ok(t)) {
		rm_warn("transport %s: refusing a source: %s", t->ops->name, RM_AUTH_HINT);
		rm_ctrl_refuse_body(&rf, RM_REFUSE_AUTH, "no proof of the pre-shared key");
		if (!t->ops->post(t, 0, RM_WIRE_REFUSE, 0, &rf, sizeof(rf), NULL, 0,
				  rm_deadline(1000)))
			/* Linger (bounded) until the source hangs up on reading
			 * it: an RDMA disconnect could overtake the SEND. */
			rm_ctrl_wait_for(t, rm_deadline(1000), never, NULL);
		return RDMAMIG_E_AUTH;
	}
	err = auth_send(t, RM_AUTH_PROOF_DST, deadline);
	if (err)
		return err;
	err = auth_join(t, deadline);
	if (err)
		auth_failed(t, RDMAMIG_LOG_WARN,
			    "dropping a source whose channels did not all join its session", err, t0,
			    deadline);
	return err;
}
