/*
 * fuzz/fuzz-vmstate.c — the device-state stream reader (kvm/vmstate.c):
 * header, section after section by name, fields of every type, a
 * variable-length array with its count, two arrays sharing one count,
 * versions, a needed and an optional subsection, the end marker.
 *
 * Input: a vmstate stream ("RMVS" ...).  Sections named "dev" and "pair"
 * load into the tables below; any other name ends the read, as a
 * destination that meets an unknown section does.
 */
#include "fuzz/fuzz.h"
#include "kvm/vmstate.h"

struct dev {
	uint8_t u8;
	uint16_t u16;
	uint32_t u32;
	uint64_t u64[4];
	uint8_t blob[24];
	uint32_t n;
	uint16_t var[8];
	uint64_t v2;
	uint64_t extra;
	uint32_t loaded;
};

static int dev_loaded(void *opaque, uint32_t version)
{
	((struct dev *)opaque)->loaded = version;
	return version == 3 ? -EINVAL : 0;	/* a post_load that refuses */
}

static const struct rm_vms_field extra_fields[] = {
	RM_VMS_SCALAR(struct dev, extra, RM_VMS_U64),
	RM_VMS_END,
};

static const struct rm_vms_desc extra_desc = {
	.name = "dev/extra", .version_id = 1, .minimum_version_id = 1, .fields = extra_fields,
};

static const struct rm_vms_desc opt_desc = {
	.name = "dev/opt", .version_id = 2, .minimum_version_id = 1, .fields = extra_fields,
	.optional = true,
};

static const struct rm_vms_desc *const dev_subs[] = { &extra_desc, &opt_desc, NULL };

static const struct rm_vms_field dev_fields[] = {
	RM_VMS_SCALAR(struct dev, u8, RM_VMS_U8),
	RM_VMS_SCALAR(struct dev, u16, RM_VMS_U16),
	RM_VMS_SCALAR(struct dev, u32, RM_VMS_U32),
	RM_VMS_ARRAY(struct dev, u64, RM_VMS_U64, 4),
	RM_VMS_BUF(struct dev, blob),
	RM_VMS_VARRAY(struct dev, var, RM_VMS_U16, n),
	{ .name = "v2", .type = RM_VMS_U64, .offset = offsetof(struct dev, v2), .count = 1,
	  .version_id = 2 },
	RM_VMS_END,
};

static const struct rm_vms_desc dev_desc = {
	.name = "dev", .version_id = 3, .minimum_version_id = 1, .fields = dev_fields,
	.subsections = dev_subs, .post_load = dev_loaded,
};

/* Two arrays with one count, as the "cpu" section's MSRs have. */
struct pair {
	uint32_t n;
	uint32_t idx[16];
	uint64_t val[16];
};

static const struct rm_vms_field pair_fields[] = {
	RM_VMS_VARRAY(struct pair, idx, RM_VMS_U32, n),
	RM_VMS_VARRAY(struct pair, val, RM_VMS_U64, n),
	RM_VMS_END,
};

static const struct rm_vms_desc pair_desc = {
	.name = "pair", .version_id = 1, .minimum_version_id = 1, .fields = pair_fields,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rm_vms_reader r;
	char name[256];
	uint32_t inst;
	int ret, sections = 0;

	if (rm_vms_reader_init(&r, data, size) < 0)
		return 0;
	while ((ret = rm_vms_peek(&r, name, &inst)) == 1 && sections++ < 64) {
		FZ_CHECK(strlen(name) < 256);
		if (!strcmp(name, "dev")) {
			struct dev d;

			memset(&d, 0, sizeof(d));
			ret = rm_vms_load(&r, &dev_desc, inst, &d);
			if (ret == 0)
				FZ_CHECK(d.n <= 8 && d.loaded >= 1 && d.loaded <= 2);
		} else if (!strcmp(name, "pair")) {
			struct pair p;

			memset(&p, 0, sizeof(p));
			ret = rm_vms_load(&r, &pair_desc, inst, &p);
			if (ret == 0)
				FZ_CHECK(p.n <= 16);
		} else {
			break;
		}
		if (ret < 0)
			break;
		FZ_CHECK(r.pos <= r.len);
	}
	if (ret == 0)
		(void)rm_vms_reader_end(&r);
	FZ_CHECK(r.pos <= r.len);
	return 0;
}
