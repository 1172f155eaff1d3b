/*
 * fuzz/fuzz-engine.c — the engine's message parsers (migration/protocol.c):
 * a destination decoding a source's SETUP and comparing it with its own VM,
 * and the names logs print for any message type.
 *
 * Input: one selector byte, then the message body as it arrives in a CTRL
 * message (selector 0: SETUP).  A decoded SETUP must encode back to a
 * message that decodes to the same description.
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
	default:
		if (in.left >= 2)
			FZ_CHECK(rm_mig_type_name((uint16_t)(in.p[0] | in.p[1] << 8)) != NULL);
		break;
	}
	return 0;
}
