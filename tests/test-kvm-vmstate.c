/*
 * tests/test-kvm-vmstate.c — the descriptive device-state engine: a device
 * table round-trips; a destination refuses, with a message naming the cause,
 * a too-old or too-new section, an unknown subsection the source marked
 * needed, a field of another type, an oversized variable array, and every
 * truncation of a valid stream; it accepts (and skips) an unknown optional
 * subsection and reads an older stream that lacks a field added later.  Arrays
 * that share a count must arrive with equal counts.
 * Host suite: no KVM needed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kvm/vmstate.h"

static char last_err[1024], last_info[1024];

static void hook(void *opaque, enum rdmamig_log_level level, const char *msg)
{
	(void)opaque;
	snprintf(level <= RDMAMIG_LOG_ERR ? last_err : last_info, sizeof(last_err), "%s", msg);
}

static void setup(void)
{
	last_err[0] = last_info[0] = '\0';
	rdmamig_set_log(hook, NULL, RDMAMIG_LOG_INFO);
}

struct dev {
	uint32_t a;
	uint64_t b[4];
	uint8_t blob[16];
	uint32_t n;
	uint16_t var[8];
	uint64_t added_in_v2;
	uint64_t extra;
	bool has_extra;
	uint32_t loaded_version;
};

static bool extra_needed(void *opaque)
{
	return ((struct dev *)opaque)->has_extra;
}

static int note_version(void *opaque, uint32_t version)
{
	((struct dev *)opaque)->loaded_version = version;
	return 0;
}

#define DEV_FIELDS_V1 \
	RM_VMS_SCALAR(struct dev, a, RM_VMS_U32), \
	RM_VMS_ARRAY(struct dev, b, RM_VMS_U64, 4), \
	RM_VMS_BUF(struct dev, blob), \
	RM_VMS_VARRAY(struct dev, var, RM_VMS_U16, n)

static const struct rm_vms_field dev_fields_v2[] = {
	DEV_FIELDS_V1,
	{ .name = "added_in_v2", .type = RM_VMS_U64, .offset = offsetof(struct dev, added_in_v2), .count = 1,
	  .version_id = 2 },
	RM_VMS_END,
};

static const struct rm_vms_field dev_fields_v1[] = { DEV_FIELDS_V1, RM_VMS_END };

static const struct rm_vms_field extra_fields[] = {
	RM_VMS_SCALAR(struct dev, extra, RM_VMS_U64),
	RM_VMS_END,
};

static const struct rm_vms_desc sub_needed = {
	.name = "dev/extra", .version_id = 1, .minimum_version_id = 1,
	.fields = extra_fields, .needed = extra_needed,
};

static const struct rm_vms_desc sub_optional = {
	.name = "dev/hint", .version_id = 1, .minimum_version_id = 1,
	.fields = extra_fields, .needed = extra_needed, .optional = true,
};

static const struct rm_vms_desc *const subs_known[] = { &sub_needed, NULL };
static const struct rm_vms_desc *const subs_none[] = { NULL };
static const struct rm_vms_desc *const subs_with_optional[] = { &sub_needed, &sub_optional, NULL };

/* This build: reads v1..v2, knows dev/extra. */
static const struct rm_vms_desc dev_v2 = {
	.name = "dev", .version_id = 2, .minimum_version_id = 1,
	.fields = dev_fields_v2, .subsections = subs_known, .post_load = note_version,
};

static struct dev sample(void)
{
	struct dev d = { .a = 0xa1, .b = { 1, 2, 3, 0xffffffffffffull }, .n = 3, .var = { 7, 8, 9 },
			 .added_in_v2 = 0x2222, .extra = 0xe0e0, .has_extra = true };

	memcpy(d.blob, "sixteen bytes!!", 16);
	return d;
}

/* Save one section with desc from d into a fresh buffer. */
static struct rm_vms_buf save(const struct rm_vms_desc *desc, struct dev *d)
{
	struct rm_vms_buf b = { 0 };

	cr_assert_eq(rm_vms_begin(&b), 0);
	cr_assert_eq(rm_vms_save(&b, desc, 7, d), 0, "save: %s", last_err);
	cr_assert_eq(rm_vms_end(&b), 0);
	return b;
}

static int load(const struct rm_vms_desc *desc, const struct rm_vms_buf *b, struct dev *out)
{
	struct rm_vms_reader r;
	int ret = rm_vms_reader_init(&r, b->data, b->len);

	if (ret == 0)
		ret = rm_vms_load(&r, desc, 7, out);
	if (ret == 0)
		ret = rm_vms_reader_end(&r);
	return ret;
}

TestSuite(vmstate, .init = setup);

Test(vmstate, round_trip)
{
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_v2, &d);

	cr_assert_eq(load(&dev_v2, &b, &out), 0, "%s", last_err);
	cr_expect_eq(out.a, d.a);
	cr_expect_arr_eq(out.b, d.b, sizeof(d.b));
	cr_expect_arr_eq(out.blob, d.blob, sizeof(d.blob));
	cr_expect_eq(out.n, 3);
	cr_expect_arr_eq(out.var, d.var, 3 * sizeof(uint16_t));
	cr_expect_eq(out.added_in_v2, d.added_in_v2);
	cr_expect_eq(out.extra, d.extra, "the needed subsection was not carried");
	cr_expect_eq(out.loaded_version, 2);
	printf("vmstate: one section with a subsection is %zu bytes\n", b.len);
	rm_vms_buf_free(&b);
}

Test(vmstate, subsection_not_needed_is_not_sent)
{
	struct dev d = sample(), out = { 0 };

	d.has_extra = false;
	struct rm_vms_buf b = save(&dev_v2, &d);
	cr_expect_null(memmem(b.data, b.len, "dev/extra", 9), "a subsection nobody needed was sent");
	cr_assert_eq(load(&dev_v2, &b, &out), 0, "%s", last_err);
	cr_expect_eq(out.extra, 0);
	rm_vms_buf_free(&b);
}

Test(vmstate, older_stream_without_a_later_field_loads)
{
	static const struct rm_vms_desc dev_v1 = {
		.name = "dev", .version_id = 1, .minimum_version_id = 1,
		.fields = dev_fields_v1, .subsections = subs_known,
	};
	struct dev d = sample(), out = { .added_in_v2 = 0x5555 };
	struct rm_vms_buf b = save(&dev_v1, &d);

	cr_assert_eq(load(&dev_v2, &b, &out), 0, "%s", last_err);
	cr_expect_eq(out.loaded_version, 1);
	cr_expect_eq(out.added_in_v2, 0x5555, "a v1 stream must leave the v2 field alone");
	cr_expect_eq(out.a, d.a);
	rm_vms_buf_free(&b);
}

Test(vmstate, too_old_version_is_refused)
{
	static const struct rm_vms_desc dev_v1 = {
		.name = "dev", .version_id = 1, .minimum_version_id = 1,
		.fields = dev_fields_v1, .subsections = subs_known,
	};
	static const struct rm_vms_desc needs_v2 = {
		.name = "dev", .version_id = 2, .minimum_version_id = 2,
		.fields = dev_fields_v2, .subsections = subs_known,
	};
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_v1, &d);

	cr_expect_eq(load(&needs_v2, &b, &out), -ENOTSUP);
	cr_expect(strstr(last_err, "section 'dev' 7 is version 1, too old: this build reads versions 2 to 2"),
		  "message: %s", last_err);
	rm_vms_buf_free(&b);
}

Test(vmstate, newer_version_is_refused)
{
	static const struct rm_vms_desc dev_v3 = {
		.name = "dev", .version_id = 3, .minimum_version_id = 1,
		.fields = dev_fields_v2, .subsections = subs_known,
	};
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_v3, &d);

	cr_expect_eq(load(&dev_v2, &b, &out), -ENOTSUP);
	cr_expect(strstr(last_err, "version 3, newer than this build reads (up to 2)"), "message: %s", last_err);
	rm_vms_buf_free(&b);
}

Test(vmstate, unknown_needed_subsection_is_refused)
{
	static const struct rm_vms_desc dev_src = {
		.name = "dev", .version_id = 2, .minimum_version_id = 1,
		.fields = dev_fields_v2, .subsections = subs_known,
	};
	static const struct rm_vms_desc dev_dst = {
		.name = "dev", .version_id = 2, .minimum_version_id = 1,
		.fields = dev_fields_v2, .subsections = subs_none,
	};
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_src, &d);

	cr_expect_eq(load(&dev_dst, &b, &out), -ENOTSUP);
	cr_expect(strstr(last_err, "unknown subsection 'dev/extra' (v1) that the source marked as needed"),
		  "message: %s", last_err);
	rm_vms_buf_free(&b);
}

Test(vmstate, unknown_optional_subsection_is_skipped)
{
	static const struct rm_vms_desc dev_src = {
		.name = "dev", .version_id = 2, .minimum_version_id = 1,
		.fields = dev_fields_v2, .subsections = subs_with_optional,
	};
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_src, &d);

	cr_assert_not_null(memmem(b.data, b.len, "dev/hint", 8));
	cr_expect_eq(load(&dev_v2, &b, &out), 0, "%s", last_err);
	cr_expect(strstr(last_info, "skipping unknown optional subsection 'dev/hint'"), "info: %s", last_info);
	cr_expect_eq(out.extra, d.extra);
	cr_expect_eq(out.a, d.a);
	rm_vms_buf_free(&b);
}

Test(vmstate, field_of_another_type_is_refused)
{
	static const struct rm_vms_field wide_a[] = {
		{ .name = "a", .type = RM_VMS_U64, .offset = offsetof(struct dev, b), .count = 1 },
		RM_VMS_ARRAY(struct dev, b, RM_VMS_U64, 4),
		RM_VMS_BUF(struct dev, blob),
		RM_VMS_VARRAY(struct dev, var, RM_VMS_U16, n),
		RM_VMS_END,
	};
	static const struct rm_vms_desc dev_src = {
		.name = "dev", .version_id = 1, .minimum_version_id = 1, .fields = wide_a,
	};
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_src, &d);

	cr_expect_eq(load(&dev_v2, &b, &out), -EPROTO);
	cr_expect(strstr(last_err, "field 'a': stream has u64[1] (element size 8), this build reads u32[1]"),
		  "message: %s", last_err);
	rm_vms_buf_free(&b);
}

Test(vmstate, oversized_variable_array_is_refused)
{
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&dev_v2, &d);
	uint8_t *p = memmem(b.data, b.len, "\3var", 4);

	cr_assert_not_null(p);
	/* name, then type (1), element size (4), count (4): claim 9 > 8 slots. */
	uint32_t nine = 9;
	memcpy(p + 4 + 1 + 4, &nine, 4);
	cr_expect_lt(load(&dev_v2, &b, &out), 0);
	cr_expect(strstr(last_err, "var"), "message: %s", last_err);
	rm_vms_buf_free(&b);
}

Test(vmstate, every_truncation_is_refused)
{
	struct dev d = sample();
	struct rm_vms_buf b = save(&dev_v2, &d);

	for (size_t len = 0; len < b.len; len++) {
		struct rm_vms_buf cut = { .data = malloc(len + 1), .len = len };
		struct dev out = { 0 };

		memcpy(cut.data, b.data, len);
		cr_expect_lt(load(&dev_v2, &cut, &out), 0, "a stream cut at %zu of %zu bytes loaded", len, b.len);
		free(cut.data);
	}
	rm_vms_buf_free(&b);
}

Test(vmstate, wrong_section_is_named)
{
	static const struct rm_vms_desc other = {
		.name = "other", .version_id = 2, .minimum_version_id = 1,
		.fields = dev_fields_v2, .subsections = subs_known,
	};
	struct dev d = sample(), out = { 0 };
	struct rm_vms_buf b = save(&other, &d);

	cr_expect_eq(load(&dev_v2, &b, &out), -EPROTO);
	cr_expect(strstr(last_err, "expected section 'dev' instance 7, stream has 'other' instance 7"),
		  "message: %s", last_err);
	rm_vms_buf_free(&b);
}

/* Hostile streams: random damage must be refused or loaded, never read out
 * of bounds (run under SANITIZE=1 to have AddressSanitizer check that). */
Test(vmstate, damaged_streams_never_crash)
{
	struct dev d = sample();
	struct rm_vms_buf b = save(&dev_v2, &d);
	unsigned seed = 12345, refused = 0;

	rdmamig_set_log(NULL, NULL, RDMAMIG_LOG_ERR);
	for (int i = 0; i < 5000; i++) {
		struct rm_vms_buf bad = { .data = malloc(b.len), .len = b.len };
		struct dev out = { 0 };

		memcpy(bad.data, b.data, b.len);
		for (int k = 0; k < 1 + rand_r(&seed) % 4; k++)
			bad.data[rand_r(&seed) % b.len] = (uint8_t)rand_r(&seed);
		refused += load(&dev_v2, &bad, &out) < 0;
		free(bad.data);
	}
	printf("vmstate: %u of 5000 randomly damaged streams refused\n", refused);
	cr_expect_gt(refused, 1000);
	rm_vms_buf_free(&b);
}

/* Two variable arrays that share one count (a vCPU's MSR indices and values)
 * must arrive with equal counts: a stream with one value fewer than indices
 * would otherwise load, and the last MSR would silently not be restored. */
struct pair {
	uint32_t n, m;
	uint32_t idx[4];
	uint64_t val[4];
};

Test(vmstate, arrays_sharing_a_count_must_agree)
{
	static const struct rm_vms_field src_fields[] = {
		RM_VMS_VARRAY(struct pair, idx, RM_VMS_U32, n),
		RM_VMS_VARRAY(struct pair, val, RM_VMS_U64, m),
		RM_VMS_END,
	};
	static const struct rm_vms_field dst_fields[] = {
		RM_VMS_VARRAY(struct pair, idx, RM_VMS_U32, n),
		RM_VMS_VARRAY(struct pair, val, RM_VMS_U64, n),
		RM_VMS_END,
	};
	static const struct rm_vms_desc src = {
		.name = "msrs", .version_id = 1, .minimum_version_id = 1, .fields = src_fields,
	};
	static const struct rm_vms_desc dst = {
		.name = "msrs", .version_id = 1, .minimum_version_id = 1, .fields = dst_fields,
	};
	struct pair in = { .n = 3, .m = 3, .idx = { 1, 2, 3 }, .val = { 10, 20, 30 } }, out;
	struct rm_vms_buf b = { 0 };
	struct rm_vms_reader r;

	/* Equal counts load. */
	cr_assert_eq(rm_vms_begin(&b), 0);
	cr_assert_eq(rm_vms_save(&b, &src, 0, &in), 0);
	cr_assert_eq(rm_vms_end(&b), 0);
	memset(&out, 0, sizeof(out));
	cr_assert_eq(rm_vms_reader_init(&r, b.data, b.len), 0);
	cr_expect_eq(rm_vms_load(&r, &dst, 0, &out), 0, "load: %s", last_err);
	cr_expect_eq(out.n, 3);
	cr_expect_eq(out.val[2], 30);
	rm_vms_buf_free(&b);

	/* One value fewer than indices is refused, naming both fields. */
	in.m = 2;
	memset(&b, 0, sizeof(b));
	cr_assert_eq(rm_vms_begin(&b), 0);
	cr_assert_eq(rm_vms_save(&b, &src, 0, &in), 0);
	cr_assert_eq(rm_vms_end(&b), 0);
	memset(&out, 0, sizeof(out));
	cr_assert_eq(rm_vms_reader_init(&r, b.data, b.len), 0);
	cr_expect_eq(rm_vms_load(&r, &dst, 0, &out), -EPROTO);
	cr_expect(strstr(last_err, "fields 'idx' and 'val' share one count, but the stream gives 3 and 2"),
		  "message: %s", last_err);
	rm_vms_buf_free(&b);
}
