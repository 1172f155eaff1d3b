/*
 * kvm/vmstate.c — the one engine that saves and loads any rm_vms_desc table
 * (format in vmstate.h).  Saving appends to a growable buffer and patches each
 * body length afterwards; loading parses a body into a list of fields first,
 * so fields are matched by name, not by position, and every mismatch can be
 * named precisely.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "kvm/vmstate.h"

/* Multi-byte fields are copied as they lie in memory: the format is
 * little-endian and so is every host KVM x86 runs on. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "vmstate assumes a little-endian host");

#define VMS_MAGIC "RMVS"
#define VMS_MAX_FIELDS 128
#define VMS_MAX_DEPTH 4

const char *rm_vms_type_name(unsigned type)
{
	switch (type) {
	case RM_VMS_U8: return "u8";
	case RM_VMS_U16: return "u16";
	case RM_VMS_U32: return "u32";
	case RM_VMS_U64: return "u64";
	case RM_VMS_BYTES: return "bytes";
	}
	return "unknown-type";
}

static uint32_t type_size(unsigned type)
{
	switch (type) {
	case RM_VMS_U8: return 1;
	case RM_VMS_U16: return 2;
	case RM_VMS_U32: return 4;
	case RM_VMS_U64: return 8;
	case RM_VMS_BYTES: return 1;
	}
	return 0;
}

/* ---- saving ---- */

void rm_vms_buf_free(struct rm_vms_buf *b)
{
	if (!b)
		return;
	free(b->data);
	*b = (struct rm_vms_buf){ 0 };
}

static void *buf_grow(struct rm_vms_buf *b, size_t n)
{
	if (b->err)
		return NULL;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *p;

		while (cap < b->len + n)
			cap *= 2;
		p = realloc(b->data, cap);
		if (!p) {
			b->err = -ENOMEM;
			return NULL;
		}
		b->data = p;
		b->cap = cap;
	}
	b->len += n;
	return b->data + b->len - n;
}

static void put_bytes(struct rm_vms_buf *b, const void *p, size_t n)
{
	void *dst = buf_grow(b, n);

	if (dst && n)
		memcpy(dst, p, n);
}

static void put_u8(struct rm_vms_buf *b, uint8_t v)
{
	put_bytes(b, &v, 1);
}

static void put_u32(struct rm_vms_buf *b, uint32_t v)
{
	put_bytes(b, &v, 4);
}

static void put_name(struct rm_vms_buf *b, const char *name)
{
	size_t n = strlen(name);

	if (n > 255) {
		b->err = -ENAMETOOLONG;
		return;
	}
	put_u8(b, (uint8_t)n);
	put_bytes(b, name, n);
}

static void patch_u32(struct rm_vms_buf *b, size_t at, uint32_t v)
{
	if (!b->err)
		memcpy(b->data + at, &v, 4);
}

int rm_vms_begin(struct rm_vms_buf *b)
{
	put_bytes(b, VMS_MAGIC, 4);
	put_u32(b, RM_VMS_FORMAT);
	return b->err;
}

int rm_vms_end(struct rm_vms_buf *b)
{
	put_u8(b, 'E');
	return b->err;
}

static int save_body(struct rm_vms_buf *b, const struct rm_vms_desc *desc, void *opaque, int depth);

static int save_fields(struct rm_vms_buf *b, const struct rm_vms_desc *desc, void *opaque)
{
	for (const struct rm_vms_field *f = desc->fields; f && f->name; f++) {
		uint32_t esize = type_size(f->type), count = f->count;

		if (f->flags & RM_VMS_VARIABLE) {
			memcpy(&count, (uint8_t *)opaque + f->count_offset, 4);
			if (count > f->count) {
				rm_err("vmstate: saving '%s' field '%s': %u elements, room for %u",
				       desc->name, f->name, count, f->count);
				return -EOVERFLOW;
			}
		}
		put_u8(b, 'F');
		put_name(b, f->name);
		put_u8(b, (uint8_t)f->type);
		put_u32(b, esize);
		put_u32(b, count);
		put_bytes(b, (uint8_t *)opaque + f->offset, (size_t)esize * count);
	}
	return b->err;
}

static int save_body(struct rm_vms_buf *b, const struct rm_vms_desc *desc, void *opaque, int depth)
{
	int ret;

	if (desc->pre_save) {
		ret = desc->pre_save(opaque);
		if (ret < 0)
			return ret;
	}
	ret = save_fields(b, desc, opaque);
	if (ret < 0)
		return ret;
	for (const struct rm_vms_desc *const *s = desc->subsections; s && *s; s++) {
		size_t len_at;

		if ((*s)->needed && !(*s)->needed(opaque))
			continue;
		if (depth >= VMS_MAX_DEPTH)
			return -ELOOP;
		put_u8(b, 'U');
		put_u8(b, (*s)->optional ? RM_VMS_SUB_OPTIONAL : 0);
		put_name(b, (*s)->name);
		put_u32(b, (*s)->version_id);
		len_at = b->len;
		put_u32(b, 0);
		ret = save_body(b, *s, opaque, depth + 1);
		if (ret < 0)
			return ret;
		patch_u32(b, len_at, (uint32_t)(b->len - len_at - 4));
	}
	return b->err;
}

int rm_vms_save(struct rm_vms_buf *b, const struct rm_vms_desc *desc, uint32_t instance, void *opaque)
{
	size_t len_at;
	int ret;

	put_u8(b, 'S');
	put_name(b, desc->name);
	put_u32(b, instance);
	put_u32(b, desc->version_id);
	len_at = b->len;
	put_u32(b, 0);
	ret = save_body(b, desc, opaque, 0);
	if (ret < 0) {
		rm_err("vmstate: saving section '%s': %s", desc->name, strerror(-ret));
		return ret;
	}
	if (b->len - len_at - 4 > UINT32_MAX)
		return -EOVERFLOW;
	patch_u32(b, len_at, (uint32_t)(b->len - len_at - 4));
	return b->err;
}

/* ---- loading ---- */

/* A bounded cursor: every get checks what is left before reading. */
struct cursor {
	const uint8_t *p;
	size_t left;
};

static int get_bytes(struct cursor *c, void *dst, size_t n)
{
	if (c->left < n)
		return -EPROTO;
	if (dst)
		memcpy(dst, c->p, n);
	c->p += n;
	c->left -= n;
	return 0;
}

static int get_u8(struct cursor *c, uint8_t *v)
{
	return get_bytes(c, v, 1);
}

static int get_u32(struct cursor *c, uint32_t *v)
{
	return get_bytes(c, v, 4);
}

/* Name into a NUL-terminated 256-byte buffer. */
static int get_name(struct cursor *c, char name[256])
{
	uint8_t n;

	if (get_u8(c, &n) < 0 || get_bytes(c, name, n) < 0)
		return -EPROTO;
	name[n] = '\0';
	return 0;
}

struct wire_field {
	char name[256];
	uint8_t type;
	uint32_t esize;
	uint32_t count;
	const uint8_t *data;
	bool used;
};

static int load_body(struct cursor *c, const struct rm_vms_desc *desc, uint32_t version,
		     void *opaque, const char *where, int depth);

static int load_field(const char *where, const struct rm_vms_field *f, const struct wire_field *w,
		      void *opaque)
{
	uint32_t esize = type_size(f->type);

	if (w->type != f->type || w->esize != esize ||
	    ((f->flags & RM_VMS_VARIABLE) ? w->count > f->count : w->count != f->count)) {
		rm_err("vmstate: %s field '%s': stream has %s[%u] (element size %u), this build reads %s[%s%u]",
		       where, f->name, rm_vms_type_name(w->type), w->count, w->esize,
		       rm_vms_type_name(f->type), (f->flags & RM_VMS_VARIABLE) ? "<=" : "", f->count);
		return -EPROTO;
	}
	memcpy((uint8_t *)opaque + f->offset, w->data, (size_t)esize * w->count);
	if (f->flags & RM_VMS_VARIABLE)
		memcpy((uint8_t *)opaque + f->count_offset, &w->count, 4);
	return 0;
}

/*
 * Variable arrays that share one count field (a vCPU's MSR indices and
 * values) must arrive with the same count: otherwise the later field's count
 * silently wins and the other array is partly dropped or read past what the
 * stream gave.  Called after field f was loaded from stream field got.
 */
static int check_shared_count(const char *where, const struct rm_vms_desc *desc,
			      const struct rm_vms_field *f, uint32_t version,
			      const struct wire_field *w, unsigned n, const struct wire_field *got)
{
	if (!(f->flags & RM_VMS_VARIABLE))
		return 0;
	for (const struct rm_vms_field *e = desc->fields; e != f; e++) {
		if (!(e->flags & RM_VMS_VARIABLE) || e->count_offset != f->count_offset ||
		    e->version_id > version)
			continue;
		for (unsigned i = 0; i < n; i++) {
			if (&w[i] == got || !w[i].used || strcmp(w[i].name, e->name))
				continue;
			if (w[i].count != got->count) {
				rm_err("vmstate: %s: fields '%s' and '%s' share one count, but the stream "
				       "gives %u and %u elements", where, e->name, f->name, w[i].count,
				       got->count);
				return -EPROTO;
			}
		}
	}
	return 0;
}

static const struct rm_vms_desc *find_sub(const struct rm_vms_desc *desc, const char *name)
{
	for (const struct rm_vms_desc *const *s = desc->subsections; s && *s; s++)
		if (!strcmp((*s)->name, name))
			return *s;
	return NULL;
}

static int load_subsection(struct cursor *c, const struct rm_vms_desc *desc, void *opaque,
			   const char *where, int depth)
{
	char name[256], sub_where[300];
	const struct rm_vms_desc *sub;
	uint32_t version, len;
	struct cursor body;
	uint8_t flags;

	if (get_u8(c, &flags) < 0 || get_name(c, name) < 0 || get_u32(c, &version) < 0 ||
	    get_u32(c, &len) < 0 || len > c->left) {
		rm_err("vmstate: %s: truncated subsection header", where);
		return -EPROTO;
	}
	body = (struct cursor){ .p = c->p, .left = len };
	get_bytes(c, NULL, len);

	sub = find_sub(desc, name);
	if (!sub) {
		if (flags & RM_VMS_SUB_OPTIONAL) {
			rm_info("vmstate: %s: skipping unknown optional subsection '%s' (v%u, %u bytes)",
				where, name, version, len);
			return 0;
		}
		rm_err("vmstate: %s: unknown subsection '%s' (v%u) that the source marked as needed; "
		       "this build cannot restore that state", where, name, version);
		return -ENOTSUP;
	}
	snprintf(sub_where, sizeof(sub_where), "%s subsection '%s'", where, name);
	if (depth >= VMS_MAX_DEPTH) {
		rm_err("vmstate: %s: nested too deep", sub_where);
		return -EPROTO;
	}
	return load_body(&body, sub, version, opaque, sub_where, depth + 1);
}

static int check_version(const char *where, const struct rm_vms_desc *desc, uint32_t version)
{
	if (version > desc->version_id) {
		rm_err("vmstate: %s is version %u, newer than this build reads (up to %u)",
		       where, version, desc->version_id);
		return -ENOTSUP;
	}
	if (version < desc->minimum_version_id) {
		rm_err("vmstate: %s is version %u, too old: this build reads versions %u to %u",
		       where, version, desc->minimum_version_id, desc->version_id);
		return -ENOTSUP;
	}
	return 0;
}

static int load_body(struct cursor *c, const struct rm_vms_desc *desc, uint32_t version,
		     void *opaque, const char *where, int depth)
{
	struct wire_field *w;
	unsigned n = 0;
	int ret;

	ret = check_version(where, desc, version);
	if (ret < 0)
		return ret;
	w = calloc(VMS_MAX_FIELDS, sizeof(*w));
	if (!w)
		return -ENOMEM;

	/* Fields first, all of them, so they can be matched by name. */
	while (c->left && c->p[0] == 'F') {
		struct wire_field *f = &w[n];
		uint64_t bytes;

		get_bytes(c, NULL, 1);
		if (n == VMS_MAX_FIELDS) {
			rm_err("vmstate: %s: more than %u fields", where, VMS_MAX_FIELDS);
			ret = -EPROTO;
			goto out;
		}
		if (get_name(c, f->name) < 0 || get_u8(c, &f->type) < 0 || get_u32(c, &f->esize) < 0 ||
		    get_u32(c, &f->count) < 0) {
			rm_err("vmstate: %s: truncated field header", where);
			ret = -EPROTO;
			goto out;
		}
		bytes = (uint64_t)f->esize * f->count;
		f->data = c->p;
		if (bytes > c->left) {
			rm_err("vmstate: %s field '%s': %llu bytes announced, %zu left in the section",
			       where, f->name, (unsigned long long)bytes, c->left);
			ret = -EPROTO;
			goto out;
		}
		get_bytes(c, NULL, bytes);
		n++;
	}

	for (const struct rm_vms_field *f = desc->fields; f && f->name; f++) {
		unsigned i;

		if (f->version_id > version)
			continue;	/* not in streams that old: keep the default */
		for (i = 0; i < n && (w[i].used || strcmp(w[i].name, f->name)); i++)
			;
		if (i == n) {
			rm_err("vmstate: %s (v%u): field '%s' missing from the stream", where, version, f->name);
			ret = -EPROTO;
			goto out;
		}
		w[i].used = true;
		ret = load_field(where, f, &w[i], opaque);
		if (ret < 0)
			goto out;
		ret = check_shared_count(where, desc, f, version, w, n, &w[i]);
		if (ret < 0)
			goto out;
	}
	for (unsigned i = 0; i < n; i++) {
		if (!w[i].used) {
			rm_err("vmstate: %s (v%u): unknown field '%s' (%s[%u]); new state must come in a subsection",
			       where, version, w[i].name, rm_vms_type_name(w[i].type), w[i].count);
			ret = -EPROTO;
			goto out;
		}
	}

	while (c->left) {
		uint8_t tag;

		get_u8(c, &tag);
		if (tag != 'U') {
			rm_err("vmstate: %s: unexpected tag %#x after the fields", where, tag);
			ret = -EPROTO;
			goto out;
		}
		ret = load_subsection(c, desc, opaque, where, depth);
		if (ret < 0)
			goto out;
	}
	ret = desc->post_load ? desc->post_load(opaque, version) : 0;
out:
	free(w);
	return ret;
}

int rm_vms_reader_init(struct rm_vms_reader *r, const void *data, size_t len)
{
	uint32_t format;

	*r = (struct rm_vms_reader){ .data = data, .len = len };
	if (len < 8 || memcmp(data, VMS_MAGIC, 4)) {
		rm_err("vmstate: not a device-state stream (bad magic)");
		return -EPROTO;
	}
	memcpy(&format, (const uint8_t *)data + 4, 4);
	if (format != RM_VMS_FORMAT) {
		rm_err("vmstate: stream format %u, this build reads format %u", format, RM_VMS_FORMAT);
		return -ENOTSUP;
	}
	r->pos = 8;
	return 0;
}

int rm_vms_peek(const struct rm_vms_reader *r, char name[256], uint32_t *instance)
{
	struct cursor c = { .p = r->data + r->pos, .left = r->len - r->pos };
	uint8_t tag;

	if (get_u8(&c, &tag) < 0)
		return -EPROTO;
	if (tag == 'E')
		return 0;
	if (tag != 'S' || get_name(&c, name) < 0 || get_u32(&c, instance) < 0)
		return -EPROTO;
	return 1;
}

int rm_vms_load(struct rm_vms_reader *r, const struct rm_vms_desc *desc, uint32_t instance, void *opaque)
{
	struct cursor c = { .p = r->data + r->pos, .left = r->len - r->pos };
	char name[256], where[300];
	uint32_t inst, version, len;
	struct cursor body;
	uint8_t tag;
	int ret;

	if (get_u8(&c, &tag) < 0 || tag != 'S' || get_name(&c, name) < 0 || get_u32(&c, &inst) < 0 ||
	    get_u32(&c, &version) < 0 || get_u32(&c, &len) < 0) {
		rm_err("vmstate: expected section '%s' %u, found a truncated or malformed header",
		       desc->name, instance);
		return -EPROTO;
	}
	if (strcmp(name, desc->name) || inst != instance) {
		rm_err("vmstate: expected section '%s' instance %u, stream has '%s' instance %u",
		       desc->name, instance, name, inst);
		return -EPROTO;
	}
	if (len > c.left) {
		rm_err("vmstate: section '%s' %u: body of %u bytes, only %zu left", name, inst, len, c.left);
		return -EPROTO;
	}
	body = (struct cursor){ .p = c.p, .left = len };
	snprintf(where, sizeof(where), "section '%s' %u", name, inst);
	ret = load_body(&body, desc, version, opaque, where, 0);
	if (ret < 0)
		return ret;
	r->pos = (size_t)(c.p - r->data) + len;
	return 0;
}

int rm_vms_reader_end(struct rm_vms_reader *r)
{
	if (r->pos >= r->len || r->data[r->pos] != 'E') {
		rm_err("vmstate: expected the end of the stream at byte %zu", r->pos);
		return -EPROTO;
	}
	r->pos++;
	return 0;
}
