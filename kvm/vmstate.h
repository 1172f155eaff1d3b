/*
 * kvm/vmstate.h — descriptive device state, after QEMU's VMState: a device
 * describes its state once, as a table of typed fields at offsets in its own
 * struct, with a version_id (the newest layout it writes) and a
 * minimum_version_id (the oldest it can still read).  Fields added later carry
 * the version that introduced them.  Optional extras go in subsections, sent
 * only when their needed() predicate says so.  One engine saves and loads any
 * table.
 *
 * Wire form, self-describing, all integers little-endian:
 *
 *   stream     := "RMVS" u32:format(=1) section* 'E'
 *   section    := 'S' u8:namelen name u32:instance u32:version u32:bodylen body
 *   body       := field* subsection*
 *   field      := 'F' u8:namelen name u8:type u32:elemsize u32:count bytes[elemsize*count]
 *   subsection := 'U' u8:flags u8:namelen name u32:version u32:bodylen body
 *
 * Because names, types and lengths travel with the data, a destination
 * can say exactly what it cannot accept ("section 'cpu' field 'msr_value':
 * stream has u32[40], this build reads u64[<=256]"), and it can skip a
 * subsection it does not know when the source flagged it RM_VMS_SUB_OPTIONAL
 * (state the destination may safely go without).  An unknown subsection
 * without that flag is refused: the source said the state is needed.
 * Every length in a stream is checked before use: streams are hostile.
 */
#ifndef RDMAMIG_KVM_VMSTATE_H
#define RDMAMIG_KVM_VMSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RM_VMS_FORMAT 1

enum rm_vms_type {
	RM_VMS_U8 = 1,
	RM_VMS_U16 = 2,
	RM_VMS_U32 = 3,
	RM_VMS_U64 = 4,
	RM_VMS_BYTES = 5,	/* opaque bytes: elemsize 1 */
};

/* Field flags. */
#define RM_VMS_VARIABLE	0x1	/* element count is the uint32_t at count_offset (<= count) */

struct rm_vms_field {
	const char *name;
	enum rm_vms_type type;
	size_t offset;		/* in the device's struct */
	uint32_t count;		/* elements (bytes for RM_VMS_BYTES); capacity if VARIABLE */
	uint32_t flags;
	size_t count_offset;	/* VARIABLE: offset of a uint32_t element count */
	uint32_t version_id;	/* first section version with this field (0 = always) */
};

/* Subsection flags, on the wire. */
#define RM_VMS_SUB_OPTIONAL 0x1

struct rm_vms_desc {
	const char *name;
	uint32_t version_id;
	uint32_t minimum_version_id;
	const struct rm_vms_field *fields;		/* ends with a NULL name */
	const struct rm_vms_desc *const *subsections;	/* NULL-terminated, or NULL */
	/* Subsections only: send it?  NULL means always. */
	bool (*needed)(void *opaque);
	/* Subsections only: a destination that does not know it may skip it. */
	bool optional;
	/* Called before fields are read from opaque / after they were written
	 * into it (with the stream's version).  Negative errno aborts. */
	int (*pre_save)(void *opaque);
	int (*post_load)(void *opaque, uint32_t version_id);
};

/* Helpers for field tables. */
#define RM_VMS_SCALAR(st, f, t) { .name = #f, .type = (t), .offset = offsetof(st, f), .count = 1 }
#define RM_VMS_ARRAY(st, f, t, n) { .name = #f, .type = (t), .offset = offsetof(st, f), .count = (n) }
#define RM_VMS_BUF(st, f) { .name = #f, .type = RM_VMS_BYTES, .offset = offsetof(st, f), \
			    .count = sizeof(((st *)0)->f) }
#define RM_VMS_VARRAY(st, f, t, cnt) { .name = #f, .type = (t), .offset = offsetof(st, f), \
	.count = sizeof(((st *)0)->f) / sizeof(((st *)0)->f[0]), .flags = RM_VMS_VARIABLE, \
	.count_offset = offsetof(st, cnt) }
#define RM_VMS_END { .name = NULL }

/* A growable output buffer.  err latches the first allocation failure. */
struct rm_vms_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	int err;
};

void rm_vms_buf_free(struct rm_vms_buf *b);
/* Stream header / end marker. */
int rm_vms_begin(struct rm_vms_buf *b);
int rm_vms_end(struct rm_vms_buf *b);
/* Append one section: desc's fields read from opaque, then needed subsections. */
int rm_vms_save(struct rm_vms_buf *b, const struct rm_vms_desc *desc, uint32_t instance, void *opaque);

struct rm_vms_reader {
	const uint8_t *data;
	size_t len;
	size_t pos;
};

/* Check the stream header.  -EPROTO (logged) if it is not a vmstate stream. */
int rm_vms_reader_init(struct rm_vms_reader *r, const void *data, size_t len);
/* Name and instance of the next section: 1, or 0 at the end marker. */
int rm_vms_peek(const struct rm_vms_reader *r, char name[256], uint32_t *instance);
/*
 * Load the next section into opaque.  It must be desc's section and the given
 * instance.  Refusals are -ENOTSUP (version, unknown needed subsection) or
 * -EPROTO (malformed, type mismatch); each is logged with the exact reason.
 */
int rm_vms_load(struct rm_vms_reader *r, const struct rm_vms_desc *desc, uint32_t instance, void *opaque);
/* Consume the end marker; -EPROTO if anything else is there. */
int rm_vms_reader_end(struct rm_vms_reader *r);

/* Name of a field type as the error messages print it ("u32"). */
const char *rm_vms_type_name(unsigned type);

#endif
