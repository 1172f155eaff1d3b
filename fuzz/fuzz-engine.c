/*
 * fuzz/fuzz-engine.c — the engine's message parsers (migration/protocol.c):
 * a destination decoding a source's SETUP and comparing it with its own VM,
 * and any message in any handover state as rm_mig_expect() takes it: the
 * state table's verdict, then the body check of what it takes (LOADED, GO,
 * RESUMED, RECOVER, OUTCOME, COMMIT, ITER...).
 *
 * Input: one selector byte, then
 *   0: a SETUP body as it arrives in a CTRL message;
 *   1: a state byte (taken modulo RM_ST_COUNT + 1: one past the last is an
 *      unknown state), a little-endian 16-bit message type, and its body.
 * A decoded SETUP must encode back to a message that decodes to the same
 * description; a body that passes its check has the size of its message.
 */
#include "fuzz/fuzz.h"
#include "migration/protocol.h"

static void setup(const uint8_t *p, size_t len)
{
	struct rdmamig_vm_desc d, d2, mine = {
		.page_size = 4096, .nr_vcpus = 2, .nr_regions = 1,
		.regions = { { .id = 0, .size = 64ull << 20, .gpa = 0 } },
	};
	struct rm_mig_setup *again;
	uint32_t flags, flags2;
	uint64_t id, id2;
	char why[256];
	size_t n;

	why[0] = 0;
	if (rm_mig_setup_decode(p, len, &d, &flags, &id, why, sizeof(why))) {
		FZ_CHECK(why[0]);
		return;
	}
	FZ_CHECK(d.nr_regions >= 1 && d.nr_regions <= RDMAMIG_MAX_REGIONS);
	FZ_CHECK(memchr(d.cpu_model, 0, sizeof(d.cpu_model)) != NULL);
	for (uint32_t i = 0; i < d.nr_regions; i++)
		FZ_CHECK(d.regions[i].size && d.regions[i].size % d.page_size == 0);
	if (rm_mig_desc_compare(&d, &mine, why, sizeof(why)))
		FZ_CHECK(why[0]);
	again = rm_mig_setup_encode(&d, flags, id, &n);
	FZ_CHECK(again != NULL);
	FZ_CHECK(rm_mig_setup_decode(again, n, &d2, &flags2, &id2, why, sizeof(why)) == 0);
	FZ_CHECK(flags2 == flags && id2 == id && rm_mig_desc_compare(&d, &d2, why, sizeof(why)) == 0);
	free(again);
}

static void in_state(struct fz_in *in)
{
	int st = fz_u8(in);
	const uint8_t *t = fz_take(in, 2);
	enum rm_mig_state state, next;
	enum rm_mig_action act;
	uint16_t type;
	char why[RM_MIG_TEXT];

	if (st < 0 || !t)
		return;
	state = (enum rm_mig_state)(st % (RM_ST_COUNT + 1));
	type = (uint16_t)(t[0] | t[1] << 8);
	act = rm_mig_lookup(state, type, &next);
	FZ_CHECK(rm_mig_state_name(state) && rm_mig_expected_name(state));
	FZ_CHECK(rm_mig_on_fail(state) <= RM_FAIL_RECOVER);
	if (act == RM_ACT_PROTO) {
		FZ_CHECK(next == state);
		return;
	}
	/* Only the known states and types have rules. */
	FZ_CHECK(state < RM_ST_COUNT && strcmp(rm_mig_type_name(type), "UNKNOWN"));
	if (act != RM_ACT_TAKE && act != RM_ACT_PROGRESS)
		return;
	why[0] = 0;
	if (rm_mig_body_check(type, in->p, in->left, why, sizeof(why))) {
		FZ_CHECK(why[0]);
		return;
	}
	switch (type) {
	case RM_MIG_GO:
	case RM_MIG_SETUP_OK:
		FZ_CHECK(in->left == 0);
		break;
	case RM_MIG_LOADED:
		FZ_CHECK(in->left == sizeof(struct rm_mig_loaded));
		break;
	case RM_MIG_RESUMED:
		FZ_CHECK(in->left == sizeof(struct rm_mig_resumed));
		break;
	case RM_MIG_RECOVER:
		FZ_CHECK(in->left == sizeof(struct rm_mig_recover));
		break;
	case RM_MIG_OUTCOME: {
		struct rm_mig_outcome o;

		FZ_CHECK(in->left == sizeof(o));
		memcpy(&o, in->p, sizeof(o));
		FZ_CHECK(o.got_go || !o.ran);
		break;
	}
	case RM_MIG_SETUP:
		setup(in->p, in->left);
		break;
	default:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz_in in = { data, size };
	int sel = fz_u8(&in);

	if (sel < 0)
		return 0;
	switch (sel) {
	case 0:
		setup(in.p, in.left);
		break;
	case 1:
		in_state(&in);
		break;
	default:
		if (in.left >= 2)
			FZ_CHECK(rm_mig_type_name((uint16_t)(in.p[0] | in.p[1] << 8)) != NULL);
		break;
	}
	return 0;
}
