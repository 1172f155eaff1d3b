/*
 * tests/test-transport-auth.c — peer authentication (the AUTH exchange of
 * transport/ctrl.c) on its own, over two fake backends wired to each other:
 * the same key passes; a wrong key, a forged, reflected or replayed proof
 * fail; nothing but AUTH, REFUSE, ABORT and BYE is taken before the proof;
 * a channel other than 0 joins only with its proof of the session;
 * keys on one side only are refused at HELLO; options must choose.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/test-transport-fake.h"

/* ---- AUTH ---- */

static struct fake *fake_keyed(enum rm_role role, const char *key, uint64_t session)
{
	struct rm_transport_opts o = { .nchan = 2, .max_write = 1u << 20, .timeout_ms = 1000 };
	struct fake *k = calloc(1, sizeof(*k));

	cr_assert_not_null(k);
	if (key) {
		o.psk_len = (unsigned)strlen(key);
		memcpy(o.psk, key, o.psk_len);
	} else {
		o.no_auth = true;
	}
	cr_assert_eq(rm_tr_init(&k->base, &fake_ops, &o, role, 2, 4096), 0);
	k->base.session = session;
	return k;
}

struct auth_run {
	struct fake *k;
	int err;
};

static void *auth_thread(void *arg)
{
	struct auth_run *a = arg;

	a->err = rm_ctrl_auth(&a->k->base, rm_deadline(2000));
	return NULL;
}

/* Both sides' rm_ctrl_auth at once, wired to each other. */
static void auth_pair(struct fake *s, struct fake *d, int *serr, int *derr)
{
	struct auth_run rs = { s, 0 }, rd = { d, 0 };
	pthread_t ts, td;

	s->peer = d;
	d->peer = s;
	cr_assert_eq(pthread_create(&td, NULL, auth_thread, &rd), 0);
	cr_assert_eq(pthread_create(&ts, NULL, auth_thread, &rs), 0);
	pthread_join(ts, NULL);
	pthread_join(td, NULL);
	*serr = rs.err;
	*derr = rd.err;
}

static unsigned count_type(const struct fake *k, uint16_t type)
{
	unsigned n = 0;

	for (unsigned i = 0; i < k->n; i++)
		n += k->f[i].type == type;
	return n;
}

#define KEY "0123456789abcdef0123456789abcdef"

Test(auth, with_the_same_key_passes)
{
	struct fake *s = fake_keyed(RM_ROLE_SOURCE, KEY, 77), *d = fake_keyed(RM_ROLE_DEST, KEY, 77);
	int serr, derr;

	cr_assert(!s->base.ctrl.authed && !d->base.ctrl.authed, "authenticated before AUTH");
	auth_pair(s, d, &serr, &derr);
	cr_assert_eq(serr, 0, "source: %s", rdmamig_strerror(serr));
	cr_assert_eq(derr, 0, "destination: %s", rdmamig_strerror(derr));
	cr_assert(s->base.ctrl.authed && d->base.ctrl.authed);
	/* Two steps on channel 0, then each side's proof on channel 1. */
	cr_assert_eq(count_type(s, RM_WIRE_AUTH), 3);
	cr_assert_eq(count_type(d, RM_WIRE_AUTH), 3);
	cr_assert_eq(s->base.ctrl.joined, 2u, "the source did not see channel 1 join");
	cr_assert_eq(d->base.ctrl.joined, 2u, "the destination did not see channel 1 join");
	/* The nonces differ between the sides. */
	cr_assert_neq(memcmp(s->base.ctrl.nonce_src, s->base.ctrl.nonce_dst, RM_WIRE_NONCE), 0);
	fake_free(s);
	fake_free(d);
}

Test(auth, with_a_wrong_key_is_refused_by_the_destination)
{
	struct fake *s = fake_keyed(RM_ROLE_SOURCE, "another key, 16+ bytes long", 77);
	struct fake *d = fake_keyed(RM_ROLE_DEST, KEY, 77);
	int serr, derr;

	log_start();
	auth_pair(s, d, &serr, &derr);
	log_stop();
	cr_assert_eq(derr, RDMAMIG_E_AUTH, "destination: %s", rdmamig_strerror(derr));
	cr_assert_eq(serr, RDMAMIG_E_AUTH, "source: %s", rdmamig_strerror(serr));
	cr_assert(!d->base.ctrl.authed && !s->base.ctrl.authed);
	/* The destination never sent its proof, and told the source why. */
	cr_assert_eq(count_type(d, RM_WIRE_AUTH), 1, "the destination sent its proof to a stranger");
	cr_assert_eq(count_type(d, RM_WIRE_REFUSE), 1);
	cr_assert(strstr(logbuf, "the peer did not prove the pre-shared key: wrong key or none; "
				 "check --psk on both sides"), "log: %s", logbuf);
	fake_free(s);
	fake_free(d);
}

Test(auth, a_forged_destination_proof_fails_at_the_source)
{
	struct fake *s = fake_keyed(RM_ROLE_SOURCE, KEY, 5), *d = fake_keyed(RM_ROLE_DEST, KEY, 5);
	uint8_t forged[RM_WIRE_MAC];
	int serr, derr;

	memset(forged, 0x5a, sizeof(forged));
	d->forge_mac = forged;	/* what the destination sends is altered */
	auth_pair(s, d, &serr, &derr);
	/* The source refused before joining channel 1: the destination waits
	 * for that proof until its deadline, and gives up. */
	cr_assert_eq(derr, -ETIMEDOUT, "destination: %s", rdmamig_strerror(derr));
	cr_assert_eq(serr, RDMAMIG_E_AUTH, "source accepted a forged proof: %s", rdmamig_strerror(serr));
	cr_assert(!s->base.ctrl.authed);
	fake_free(s);
	fake_free(d);
}

/* A source that reflects the destination's own proof, or replays one from
 * an earlier session, proves nothing. */
Test(auth, reflected_or_replayed_proofs_fail)
{
	struct fake *s = fake_keyed(RM_ROLE_SOURCE, KEY, 9), *d = fake_keyed(RM_ROLE_DEST, KEY, 9);
	uint8_t old_src[RM_WIRE_MAC], refl[RM_WIRE_MAC];
	int serr, derr;

	auth_pair(s, d, &serr, &derr);
	cr_assert_eq(serr, 0);
	cr_assert_eq(derr, 0);
	cr_assert_eq(rm_ctrl_auth_mac(&s->base, 'S', old_src), 0);
	fake_free(s);
	fake_free(d);

	/* Replay: the earlier session's source proof, in a new session. */
	s = fake_keyed(RM_ROLE_SOURCE, KEY, 9);
	d = fake_keyed(RM_ROLE_DEST, KEY, 9);
	s->forge_mac = old_src;
	auth_pair(s, d, &serr, &derr);
	cr_assert_eq(derr, RDMAMIG_E_AUTH, "a replayed proof passed: %s", rdmamig_strerror(derr));
	fake_free(s);
	fake_free(d);

	/* Reflection: the proof the destination would give, as the source's.
	 * The mac is the right one for role 'D' over this very session. */
	s = fake_keyed(RM_ROLE_SOURCE, KEY, 9);
	d = fake_keyed(RM_ROLE_DEST, KEY, 9);
	s->peer = d;
	d->peer = s;
	{
		struct auth_run rd = { d, 0 };
		pthread_t td;
		struct rm_wire_auth a = { .step = rm_wire_put32(RM_AUTH_NONCE_SRC) };
		const char *why;

		memset(a.nonce, 0x11, sizeof(a.nonce));
		cr_assert_eq(pthread_create(&td, NULL, auth_thread, &rd), 0);
		s->base.ctrl.auth_sent = RM_AUTH_NONCE_SRC;
		memcpy(s->base.ctrl.nonce_src, a.nonce, RM_WIRE_NONCE);
		cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), 0);
		/* Wait for the destination's nonce to reach the source. */
		for (int i = 0; i < 200 && s->base.ctrl.auth_got < RM_AUTH_NONCE_DST; i++)
			usleep(5000);
		cr_assert_eq(s->base.ctrl.auth_got, RM_AUTH_NONCE_DST);
		cr_assert_eq(rm_ctrl_auth_mac(&s->base, 'D', refl), 0);
		a = (struct rm_wire_auth){ .step = rm_wire_put32(RM_AUTH_PROOF_SRC) };
		memcpy(a.mac, refl, sizeof(refl));
		cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), 0);
		pthread_join(td, NULL);
		cr_assert_eq(rd.err, RDMAMIG_E_AUTH, "a reflected proof passed");
	}
	fake_free(s);
	fake_free(d);
}

/* Before the proof checked out, only AUTH, REFUSE, ABORT and BYE pass:
 * no CTRL (whose reassembly allocates), no MARKER, no LAYOUT. */
Test(auth, nothing_is_taken_before_the_proof)
{
	struct fake *d = fake_keyed(RM_ROLE_DEST, KEY, 1), *s = fake_keyed(RM_ROLE_SOURCE, KEY, 1);
	struct rm_wire_marker mk = { .epoch = rm_wire_put64(1), .chan = 0 };
	struct rm_wire_layout lay = { 0 };
	struct rm_wire_auth a = { .step = rm_wire_put32(RM_AUTH_PROOF_SRC) };
	const char *why = NULL;

	cr_assert_eq(feed_ctrl(d, 0, RM_WIRE_F_FIRST, RM_WIRE_ENGINE_FIRST, 64, 16, 0, &why),
		     RDMAMIG_E_PROTO);
	cr_assert(strstr(why, "before authentication"), "%s", why);
	cr_assert_eq(d->base.ctrl.queued_bytes, 0, "allocated for an unauthenticated peer");
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why), RDMAMIG_E_PROTO);
	cr_assert_eq(rm_ctrl_rx(&s->base, 0, RM_WIRE_LAYOUT, 0, &lay, sizeof(lay), &why), RDMAMIG_E_PROTO);
	/* A proof before the nonces is out of order. */
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	cr_assert(strstr(why, "out of order"), "%s", why);
	/* AUTH off channel 0, or to a side without a key. */
	a.step = rm_wire_put32(RM_AUTH_NONCE_SRC);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	fake_free(d);
	fake_free(s);
	d = fake_keyed(RM_ROLE_DEST, NULL, 1);
	cr_assert(d->base.ctrl.authed, "no_auth starts authenticated");
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	fake_free(d);
}

/*
 * Channel 1 joins the session only with the proof of the peer of channel 0's
 * exchange: not before that exchange, not with a proof from another session
 * (the session id alone is no secret), not with the other role's proof, and
 * nothing else is taken on it before.
 */
Test(auth, a_channel_joins_only_with_its_session_proof)
{
	struct fake *d = fake_keyed(RM_ROLE_DEST, KEY, 9), *other = fake_keyed(RM_ROLE_SOURCE, KEY, 9);
	struct rm_wire_marker mk = { .epoch = rm_wire_put64(1), .chan = rm_wire_put32(1) };
	struct rm_wire_auth a = { .step = rm_wire_put32(RM_AUTH_JOIN_SRC) };
	const char *why = NULL;

	memset(d->base.ctrl.nonce_src, 0x11, RM_WIRE_NONCE);
	memset(d->base.ctrl.nonce_dst, 0x22, RM_WIRE_NONCE);
	/* The right proof, but channel 0's exchange is not done yet. */
	memcpy(other->base.ctrl.nonce_src, d->base.ctrl.nonce_src, RM_WIRE_NONCE);
	memcpy(other->base.ctrl.nonce_dst, d->base.ctrl.nonce_dst, RM_WIRE_NONCE);
	cr_assert_eq(rm_ctrl_join_mac(&other->base, 'S', 1, a.mac), 0);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	cr_assert(strstr(why, "out of order"), "%s", why);
	d->base.ctrl.authed = true;	/* as after a good step 3 */
	/* Nothing but AUTH on channel 1 before it joined. */
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why), RDMAMIG_E_PROTO);
	cr_assert(strstr(why, "before it proved it belongs to the session"), "%s", why);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_KEEPALIVE, 0, NULL, 0, &why), RDMAMIG_E_PROTO);
	/* A proof valid in another session (same id, other nonces): replayed. */
	memset(other->base.ctrl.nonce_dst, 0x33, RM_WIRE_NONCE);
	cr_assert_eq(rm_ctrl_join_mac(&other->base, 'S', 1, a.mac), 0);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_AUTH);
	cr_assert(strstr(why, "did not prove it belongs"), "%s", why);
	cr_assert_eq(d->base.ctrl.joined, 0u, "a replayed proof joined channel 1");
	/* The destination's own proof, reflected; another channel's proof. */
	memcpy(other->base.ctrl.nonce_dst, d->base.ctrl.nonce_dst, RM_WIRE_NONCE);
	cr_assert_eq(rm_ctrl_join_mac(&other->base, 'D', 1, a.mac), 0);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_AUTH);
	cr_assert_eq(rm_ctrl_join_mac(&other->base, 'S', 2, a.mac), 0);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_AUTH);
	/* The nonce field set, or the wrong step: refused as such. */
	cr_assert_eq(rm_ctrl_join_mac(&other->base, 'S', 1, a.mac), 0);
	a.nonce[0] = 1;
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	a.nonce[0] = 0;
	a.step = rm_wire_put32(RM_AUTH_JOIN_DST);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	cr_assert_eq(d->base.ctrl.joined, 0u);
	/* The right proof joins it, once; then the channel is open. */
	a.step = rm_wire_put32(RM_AUTH_JOIN_SRC);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), 0, "%s", why);
	cr_assert_eq(d->base.ctrl.joined, 2u);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), RDMAMIG_E_PROTO);
	cr_assert_eq(rm_ctrl_rx(&d->base, 1, RM_WIRE_MARKER, 0, &mk, sizeof(mk), &why), 0, "%s", why);
	fake_free(d);
	fake_free(other);
}

/* Keys on one side only: each side refuses at HELLO time. */
/*
 * A handshake left waiting (a bench run's source timed out at step 2 while
 * its destination waited too) says, in its error, how long it waited of
 * the time it had, and per channel what went each way last: enough to tell
 * a message lost on the way from one never sent, and a connect that used
 * up the time from a silent peer.
 */
Test(auth, a_source_left_waiting_says_what_each_channel_carried)
{
	struct fake *s = fake_keyed(RM_ROLE_SOURCE, KEY, 77);

	log_start();
	cr_assert_eq(rm_ctrl_auth(&s->base, rm_deadline(200)), -ETIMEDOUT);
	log_stop();
	cr_assert_not_null(strstr(logbuf, "authenticating the destination: Connection timed out after "),
			   "%s", logbuf);
	cr_assert_not_null(strstr(logbuf, "ms it had: AUTH step sent 1, taken 0"), "%s", logbuf);
	cr_assert_not_null(strstr(logbuf, "channel 0: sent 1 (last AUTH "), "%s", logbuf);
	cr_assert_not_null(strstr(logbuf, " ms ago), received none; channel 1: sent none, received none"),
			   "%s", logbuf);
	fake_free(s);
}

Test(auth, a_destination_left_waiting_says_the_last_step_each_way)
{
	struct fake *d = fake_keyed(RM_ROLE_DEST, KEY, 77);
	struct rm_wire_auth a = { .step = rm_wire_put32(RM_AUTH_NONCE_SRC), .nonce = { 1 } };
	const char *why = NULL;

	/* The source's nonce and a keep-alive came; its proof never does. */
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_AUTH, 0, &a, sizeof(a), &why), 0, "%s", why);
	cr_assert_eq(rm_ctrl_rx(&d->base, 0, RM_WIRE_KEEPALIVE, 0, NULL, 0, &why), 0, "%s", why);
	log_start();
	cr_assert_eq(rm_ctrl_auth(&d->base, rm_deadline(200)), -ETIMEDOUT);
	log_stop();
	cr_assert_eq(d->n, 1);
	cr_assert_eq(d->f[0].type, RM_WIRE_AUTH);
	cr_assert_not_null(strstr(logbuf, "dropping a source that did not authenticate: Connection timed out after "),
			   "%s", logbuf);
	cr_assert_not_null(strstr(logbuf, "AUTH step sent 2, taken 1"), "%s", logbuf);
	cr_assert_not_null(strstr(logbuf, "channel 0: sent 1 (last AUTH "), "%s", logbuf);
	cr_assert_not_null(strstr(logbuf, "received 2 (last KEEPALIVE "), "%s", logbuf);
	fake_free(d);
}

Test(auth, is_required_both_ways_at_hello)
{
	struct rm_transport_opts keyed = { .nchan = 2, .max_write = 1u << 20, .psk_len = 32 };
	struct rm_transport_opts open = { .nchan = 2, .max_write = 1u << 20, .no_auth = true };
	struct rm_wire_hello hk, ho;
	struct rm_wire_hello_ack a, out;
	char why[96];

	rm_ctrl_hello(&hk, &keyed, 0, 1, 0);
	rm_ctrl_hello(&ho, &open, 0, 1, 0);
	cr_assert(rm_wire_get32(hk.caps) & RM_CAP_AUTH);
	cr_assert(!(rm_wire_get32(ho.caps) & RM_CAP_AUTH));
	/* A keyed destination refuses a source that offers no key. */
	cr_assert_eq(rm_ctrl_hello_check(&ho, false, true, why, sizeof(why)), RM_REFUSE_AUTH);
	cr_assert_eq(rm_ctrl_hello_check(&hk, false, true, why, sizeof(why)), 0, "%s", why);
	/* A keyed source refuses a destination without one. */
	rm_ctrl_hello_ack(&a, &hk, 0, 0, false);
	cr_assert(!(rm_wire_get32(a.caps) & RM_CAP_AUTH));
	log_start();
	cr_assert_eq(rm_ctrl_hello_reply("tcp", 0, RM_WIRE_HELLO_ACK, &a, sizeof(a), &hk, 0, &out),
		     RDMAMIG_E_AUTH);
	log_stop();
	cr_assert(strstr(logbuf, "without a pre-shared key"), "log: %s", logbuf);
	rm_ctrl_hello_ack(&a, &hk, 0, 0, true);
	cr_assert_eq(rm_ctrl_hello_reply("tcp", 0, RM_WIRE_HELLO_ACK, &a, sizeof(a), &hk, 0, &out), 0);
	/* Neither side keyed: no AUTH granted. */
	rm_ctrl_hello_ack(&a, &ho, 0, 0, false);
	cr_assert_eq(rm_ctrl_hello_reply("tcp", 0, RM_WIRE_HELLO_ACK, &a, sizeof(a), &ho, 0, &out), 0);
}

/* Options with neither a key nor no_auth are refused; so are both. */
Test(auth, options_must_say_which)
{
	struct rm_transport_opts in = { .kind = RM_TRANSPORT_TCP }, o;

	cr_assert_eq(rm_tr_opts_fill(&o, &in), -EINVAL, "zeroed options ran without a key");
	in.no_auth = true;
	cr_assert_eq(rm_tr_opts_fill(&o, &in), 0);
	in.psk_len = 32;
	cr_assert_eq(rm_tr_opts_fill(&o, &in), -EINVAL, "a key and no_auth");
	in.no_auth = false;
	cr_assert_eq(rm_tr_opts_fill(&o, &in), 0);
	in.psk_len = RM_TR_PSK_MIN - 1;
	cr_assert_eq(rm_tr_opts_fill(&o, &in), -EINVAL, "a short key");
	in.psk_len = RM_TR_PSK_MAX + 1;
	cr_assert_eq(rm_tr_opts_fill(&o, &in), -EINVAL, "a long key");
}
