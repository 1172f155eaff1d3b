/*
 * tests/test-verbs-smoke.c — the test bed's RDMA is real: connect an RC QP to
 * itself through rdma_cm on rxe0, RDMA WRITE 64 MiB from one registered buffer
 * into another, verify every byte, and disconnect cleanly on both sides.
 *
 * Runs on the soft-RoCE bed only (RDMAMIG_RXE_DEV / RDMAMIG_RXE_ADDR come from
 * scripts/soft-roce/setup.sh).  Both ends live in this one thread: every
 * rdma_cm wait is a poll() on the event channel with a deadline, so a broken
 * bed fails in seconds instead of hanging.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define TOTAL (64u << 20)
#define CHUNK (1u << 20)
#define SQ_DEPTH 16
#define WAIT_MS 10000

struct peer_info {
	uint64_t addr;
	uint32_t rkey;
} __attribute__((packed));

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Wait for one event of the expected type on ch; the caller acks it. */
static struct rdma_cm_event *wait_event(struct rdma_event_channel *ch,
					enum rdma_cm_event_type want)
{
	struct pollfd pfd = { .fd = ch->fd, .events = POLLIN };
	struct rdma_cm_event *ev;

	cr_assert_eq(poll(&pfd, 1, WAIT_MS), 1, "no %s within %d ms", rdma_event_str(want), WAIT_MS);
	cr_assert_eq(rdma_get_cm_event(ch, &ev), 0, "rdma_get_cm_event: %s", strerror(errno));
	cr_assert_eq(ev->event, want, "got %s (status %d), expected %s", rdma_event_str(ev->event),
		     ev->status, rdma_event_str(want));
	return ev;
}

static struct rdma_event_channel *channel(void)
{
	struct rdma_event_channel *ch = rdma_create_event_channel();

	cr_assert_not_null(ch, "rdma_create_event_channel: %s (is rdma_ucm loaded?)", strerror(errno));
	cr_assert_eq(fcntl(ch->fd, F_SETFL, fcntl(ch->fd, F_GETFL) | O_NONBLOCK), 0);
	return ch;
}

static struct ibv_qp_init_attr qp_attr(struct ibv_cq *cq)
{
	return (struct ibv_qp_init_attr){
		.send_cq = cq,
		.recv_cq = cq,
		.qp_type = IBV_QPT_RC,
		.cap = { .max_send_wr = SQ_DEPTH, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1 },
	};
}

static void *map_buffer(void)
{
	void *p = mmap(NULL, TOTAL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	cr_assert_neq(p, MAP_FAILED, "mmap %u bytes: %s", TOTAL, strerror(errno));
	return p;
}

Test(verbs_smoke, rc_write_64MiB_to_self_verified)
{
	const char *dev = getenv("RDMAMIG_RXE_DEV") ?: "rxe0";
	const char *ip = getenv("RDMAMIG_RXE_ADDR") ?: "10.77.0.1";
	struct rdma_event_channel *sch = channel(), *cch = channel();
	struct rdma_cm_id *listen_id, *server_id, *client_id;
	struct rdma_cm_event *ev;
	struct sockaddr_in sin = { .sin_family = AF_INET };

	cr_assert_eq(inet_pton(AF_INET, ip, &sin.sin_addr), 1, "bad address %s", ip);

	/* Server: listen on an ephemeral port of the bed's address. */
	cr_assert_eq(rdma_create_id(sch, &listen_id, NULL, RDMA_PS_TCP), 0);
	cr_assert_eq(rdma_bind_addr(listen_id, (struct sockaddr *)&sin), 0,
		     "rdma_bind_addr %s: %s (is this the soft-RoCE bed?)", ip, strerror(errno));
	cr_assert_eq(rdma_listen(listen_id, 1), 0, "rdma_listen: %s", strerror(errno));
	sin.sin_port = rdma_get_src_port(listen_id);
	cr_assert_not_null(listen_id->verbs, "listener bound to no RDMA device");
	cr_assert_str_eq(ibv_get_device_name(listen_id->verbs->device), dev);

	/* Client: resolve the address and route, then a QP. */
	cr_assert_eq(rdma_create_id(cch, &client_id, NULL, RDMA_PS_TCP), 0);
	cr_assert_eq(rdma_resolve_addr(client_id, NULL, (struct sockaddr *)&sin, WAIT_MS), 0);
	rdma_ack_cm_event(wait_event(cch, RDMA_CM_EVENT_ADDR_RESOLVED));
	cr_assert_eq(rdma_resolve_route(client_id, WAIT_MS), 0);
	rdma_ack_cm_event(wait_event(cch, RDMA_CM_EVENT_ROUTE_RESOLVED));

	struct ibv_pd *cpd = ibv_alloc_pd(client_id->verbs);
	struct ibv_cq *ccq = ibv_create_cq(client_id->verbs, SQ_DEPTH * 2, NULL, NULL, 0);
	cr_assert(cpd && ccq);
	struct ibv_qp_init_attr cattr = qp_attr(ccq);
	cr_assert_eq(rdma_create_qp(client_id, cpd, &cattr), 0, "client QP: %s", strerror(errno));
	uint8_t *src = map_buffer();
	struct ibv_mr *smr = ibv_reg_mr(cpd, src, TOTAL, IBV_ACCESS_LOCAL_WRITE);
	cr_assert_not_null(smr, "ibv_reg_mr source: %s (ulimit -l?)", strerror(errno));

	struct rdma_conn_param cparam = { .responder_resources = 1, .initiator_depth = 1, .retry_count = 7 };
	cr_assert_eq(rdma_connect(client_id, &cparam), 0, "rdma_connect: %s", strerror(errno));

	/* Server: accept with the destination buffer's address and rkey. */
	ev = wait_event(sch, RDMA_CM_EVENT_CONNECT_REQUEST);
	server_id = ev->id;
	rdma_ack_cm_event(ev);
	struct ibv_pd *spd = ibv_alloc_pd(server_id->verbs);
	struct ibv_cq *scq = ibv_create_cq(server_id->verbs, 4, NULL, NULL, 0);
	cr_assert(spd && scq);
	struct ibv_qp_init_attr sattr = qp_attr(scq);
	cr_assert_eq(rdma_create_qp(server_id, spd, &sattr), 0, "server QP: %s", strerror(errno));
	uint8_t *dst = map_buffer();
	struct ibv_mr *dmr = ibv_reg_mr(spd, dst, TOTAL, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
	cr_assert_not_null(dmr, "ibv_reg_mr destination: %s", strerror(errno));
	struct peer_info info = { .addr = htole64((uintptr_t)dst), .rkey = htole32(dmr->rkey) };
	struct rdma_conn_param sparam = {
		.responder_resources = 1, .initiator_depth = 1,
		.private_data = &info, .private_data_len = sizeof(info),
	};
	cr_assert_eq(rdma_accept(server_id, &sparam), 0, "rdma_accept: %s", strerror(errno));

	ev = wait_event(cch, RDMA_CM_EVENT_ESTABLISHED);
	cr_assert_geq(ev->param.conn.private_data_len, sizeof(info));
	memcpy(&info, ev->param.conn.private_data, sizeof(info));
	rdma_ack_cm_event(ev);
	rdma_ack_cm_event(wait_event(sch, RDMA_CM_EVENT_ESTABLISHED));

	/* A pattern no chunk shares with another, so misplaced data shows. */
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < TOTAL; i += 8) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		memcpy(src + i, &x, 8);
	}

	uint64_t remote = le64toh(info.addr), t0 = now_ms();
	unsigned posted = 0, done = 0, inflight = 0, nchunks = TOTAL / CHUNK;
	while (done < nchunks) {
		while (posted < nchunks && inflight < SQ_DEPTH) {
			struct ibv_sge sge = {
				.addr = (uintptr_t)src + (uint64_t)posted * CHUNK,
				.length = CHUNK,
				.lkey = smr->lkey,
			};
			struct ibv_send_wr wr = {
				.wr_id = posted,
				.sg_list = &sge,
				.num_sge = 1,
				.opcode = IBV_WR_RDMA_WRITE,
				.send_flags = IBV_SEND_SIGNALED,
				.wr.rdma = { .remote_addr = remote + (uint64_t)posted * CHUNK, .rkey = le32toh(info.rkey) },
			}, *bad;
			int ret = ibv_post_send(client_id->qp, &wr, &bad);

			cr_assert_eq(ret, 0, "ibv_post_send: %s", strerror(ret));
			posted++, inflight++;
		}
		struct ibv_wc wc[SQ_DEPTH];
		int n = ibv_poll_cq(ccq, SQ_DEPTH, wc);

		cr_assert_geq(n, 0, "ibv_poll_cq failed");
		for (int i = 0; i < n; i++)
			cr_assert_eq(wc[i].status, IBV_WC_SUCCESS, "write %lu: %s", (unsigned long)wc[i].wr_id,
				     ibv_wc_status_str(wc[i].status));
		done += n, inflight -= n;
		cr_assert_lt(now_ms() - t0, 120000u, "64 MiB not written within 120 s (%u/%u chunks)", done, nchunks);
	}
	uint64_t ms = now_ms() - t0;

	size_t bad_bytes = 0;
	for (size_t i = 0; i < TOTAL; i++)
		bad_bytes += src[i] != dst[i];
	cr_assert_eq(bad_bytes, 0, "%zu of %u bytes differ after the writes", bad_bytes, TOTAL);
	printf("verbs smoke: RDMA WRITE of %u bytes over %s (%s) in %lu ms (%.1f MB/s); %u bytes verified\n",
	       TOTAL, ibv_get_device_name(client_id->verbs->device), ip, (unsigned long)ms,
	       ms ? TOTAL / 1000.0 / ms : 0.0, TOTAL);

	/* Disconnect: the client's DREQ reaches the server, whose own
	 * rdma_disconnect answers it, and then both sides have seen it. */
	cr_assert_eq(rdma_disconnect(client_id), 0, "rdma_disconnect: %s", strerror(errno));
	rdma_ack_cm_event(wait_event(sch, RDMA_CM_EVENT_DISCONNECTED));
	cr_assert_eq(rdma_disconnect(server_id), 0, "server rdma_disconnect: %s", strerror(errno));
	rdma_ack_cm_event(wait_event(cch, RDMA_CM_EVENT_DISCONNECTED));

	ibv_dereg_mr(dmr);
	ibv_dereg_mr(smr);
	rdma_destroy_qp(server_id);
	rdma_destroy_qp(client_id);
	cr_assert_eq(ibv_destroy_cq(scq), 0);
	cr_assert_eq(ibv_destroy_cq(ccq), 0);
	cr_assert_eq(ibv_dealloc_pd(spd), 0);
	cr_assert_eq(ibv_dealloc_pd(cpd), 0);
	rdma_destroy_id(server_id);
	rdma_destroy_id(client_id);
	rdma_destroy_id(listen_id);
	rdma_destroy_event_channel(sch);
	rdma_destroy_event_channel(cch);
	munmap(src, TOTAL);
	munmap(dst, TOTAL);
}
