/* migration/protocol.c — encode, decode and check the engine's messages. */
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "migration/protocol.h"

const char *rm_mig_type_name(uint16_t type)
{
	static const char *const names[] = {
		[RM_MIG_SETUP - RM_WIRE_ENGINE_FIRST] = "SETUP",
		[RM_MIG_SETUP_OK - RM_WIRE_ENGINE_FIRST] = "SETUP_OK",
		[RM_MIG_REFUSE - RM_WIRE_ENGINE_FIRST] = "REFUSE",
		[RM_MIG_ITER - RM_WIRE_ENGINE_FIRST] = "ITER",
		[RM_MIG_STATE - RM_WIRE_ENGINE_FIRST] = "STATE",
		[RM_MIG_COMMIT - RM_WIRE_ENGINE_FIRST] = "COMMIT",
		[RM_MIG_RESUMED - RM_WIRE_ENGINE_FIRST] = "RESUMED",
		[RM_MIG_LOADED - RM_WIRE_ENGINE_FIRST] = "LOADED",
		[RM_MIG_GO - RM_WIRE_ENGINE_FIRST] = "GO",
		[RM_MIG_RECOVER - RM_WIRE_ENGINE_FIRST] = "RECOVER",
		[RM_MIG_OUTCOME - RM_WIRE_ENGINE_FIRST] = "OUTCOME",
	};
	unsigned i = (unsigned)type - RM_WIRE_ENGINE_FIRST;

	if (type >= RM_WIRE_ENGINE_FIRST && i < ARRAY_SIZE(names) && names[i])
		return names[i];
	return "UNKNOWN";
}

/* The state machine of protocol.h, row for row.  A (state, type) pair that
 * is not here is a protocol error. */
const struct rm_mig_rule rm_mig_rules[] = {
	{ RM_ST_SRC_SETUP, RM_MIG_SETUP_OK, RM_ACT_TAKE, RM_ST_SRC_ITERATE },
	{ RM_ST_SRC_SETUP, RM_MIG_REFUSE, RM_ACT_REFUSED, RM_ST_SRC_SETUP },
	{ RM_ST_SRC_ITERATE, RM_MIG_REFUSE, RM_ACT_REFUSED, RM_ST_SRC_ITERATE },
	{ RM_ST_SRC_COMMITTED, RM_MIG_LOADED, RM_ACT_TAKE, RM_ST_SRC_GO_SENT },
	{ RM_ST_SRC_COMMITTED, RM_MIG_REFUSE, RM_ACT_REFUSED, RM_ST_SRC_COMMITTED },
	{ RM_ST_SRC_GO_SENT, RM_MIG_RESUMED, RM_ACT_TAKE, RM_ST_SRC_DONE },
	{ RM_ST_SRC_RECOVER, RM_MIG_OUTCOME, RM_ACT_TAKE, RM_ST_SRC_DONE },
	{ RM_ST_DST_SETUP, RM_MIG_SETUP, RM_ACT_TAKE, RM_ST_DST_RECEIVE },
	{ RM_ST_DST_RECEIVE, RM_MIG_ITER, RM_ACT_PROGRESS, RM_ST_DST_RECEIVE },
	{ RM_ST_DST_RECEIVE, RM_MIG_STATE, RM_ACT_TAKE, RM_ST_DST_RECEIVE },
	{ RM_ST_DST_RECEIVE, RM_MIG_COMMIT, RM_ACT_TAKE, RM_ST_DST_LOADED },
	{ RM_ST_DST_LOADED, RM_MIG_ITER, RM_ACT_PROGRESS, RM_ST_DST_LOADED },
	{ RM_ST_DST_LOADED, RM_MIG_GO, RM_ACT_TAKE, RM_ST_DST_RUNNING },
	{ RM_ST_DST_RECOVER, RM_MIG_RECOVER, RM_ACT_TAKE, RM_ST_DST_RECOVER },
};
const unsigned rm_mig_nr_rules = ARRAY_SIZE(rm_mig_rules);

static const struct {
	const char *name;
	enum rm_mig_on_fail on_fail;
} states[RM_ST_COUNT] = {
	[RM_ST_SRC_SETUP] = { "source SETUP", RM_FAIL_RESUME },
	[RM_ST_SRC_ITERATE] = { "source ITERATE", RM_FAIL_RESUME },
	[RM_ST_SRC_COMMITTED] = { "source COMMITTED", RM_FAIL_RESUME },
	[RM_ST_SRC_GO_SENT] = { "source GO_SENT", RM_FAIL_RECOVER },
	[RM_ST_SRC_RECOVER] = { "source RECOVER", RM_FAIL_RECOVER },
	[RM_ST_SRC_DONE] = { "source DONE", RM_FAIL_RECOVER },
	[RM_ST_DST_SETUP] = { "destination SETUP", RM_FAIL_DISCARD },
	[RM_ST_DST_RECEIVE] = { "destination RECEIVE", RM_FAIL_DISCARD },
	[RM_ST_DST_LOADED] = { "destination LOADED", RM_FAIL_RECOVER },
	[RM_ST_DST_RUNNING] = { "destination RUNNING", RM_FAIL_RECOVER },
	[RM_ST_DST_RECOVER] = { "destination RECOVER", RM_FAIL_RECOVER },
};

enum rm_mig_action rm_mig_lookup(enum rm_mig_state state, uint16_t type, enum rm_mig_state *next)
{
	for (unsigned i = 0; i < rm_mig_nr_rules; i++) {
		if (rm_mig_rules[i].state == state && rm_mig_rules[i].type == type) {
			*next = rm_mig_rules[i].next;
			return rm_mig_rules[i].action;
		}
	}
	*next = state;
	return RM_ACT_PROTO;
}

const char *rm_mig_expected_name(enum rm_mig_state state)
{
	for (unsigned i = 0; i < rm_mig_nr_rules; i++)
		if (rm_mig_rules[i].state == state && rm_mig_rules[i].action == RM_ACT_TAKE)
			return rm_mig_type_name(rm_mig_rules[i].type);
	return "nothing";
}

enum rm_mig_on_fail rm_mig_on_fail(enum rm_mig_state state)
{
	/* An unknown state is treated as the most careful one. */
	return (unsigned)state < RM_ST_COUNT ? states[state].on_fail : RM_FAIL_RECOVER;
}

const char *rm_mig_state_name(enum rm_mig_state state)
{
	return (unsigned)state < RM_ST_COUNT ? states[state].name : "unknown state";
}

int rm_mig_body_check(uint16_t type, const void *body, size_t len, char *why, size_t whylen)
{
	size_t want;

	switch (type) {
	case RM_MIG_SETUP_OK:
	case RM_MIG_GO:
		want = 0;
		break;
	case RM_MIG_ITER:
		want = sizeof(struct rm_mig_iter);
		break;
	case RM_MIG_COMMIT:
		want = sizeof(struct rm_mig_commit);
		break;
	case RM_MIG_LOADED:
		want = sizeof(struct rm_mig_loaded);
		break;
	case RM_MIG_RESUMED:
		want = sizeof(struct rm_mig_resumed);
		break;
	case RM_MIG_RECOVER:
		want = sizeof(struct rm_mig_recover);
		break;
	case RM_MIG_OUTCOME:
		want = sizeof(struct rm_mig_outcome);
		break;
	default:
		return 0;
	}
	if (len != want) {
		snprintf(why, whylen, "%s of %zu bytes, expected %zu", rm_mig_type_name(type), len, want);
		return RDMAMIG_E_PROTO;
	}
	if (type == RM_MIG_ITER) {
		struct rm_mig_iter it;

		memcpy(&it, body, sizeof(it));
		if (it.reserved)
			goto reserved;
	} else if (type == RM_MIG_COMMIT) {
		struct rm_mig_commit c;

		memcpy(&c, body, sizeof(c));
		if (c.reserved || (le32toh(c.flags) & ~RM_MIG_F_VERIFY))
			goto reserved;
	} else if (type == RM_MIG_RECOVER) {
		struct rm_mig_recover r;

		memcpy(&r, body, sizeof(r));
		if (r.reserved || (le32toh(r.flags) & ~RM_MIG_RECOVER_ABANDON))
			goto reserved;
	} else if (type == RM_MIG_OUTCOME) {
		struct rm_mig_outcome o;

		memcpy(&o, body, sizeof(o));
		/* A guest ran there only after GO arrived there. */
		if (le32toh(o.got_go) > 1 || le32toh(o.ran) > 1 || (o.ran && !o.got_go)) {
			snprintf(why, whylen, "OUTCOME with got_go %u, ran %u", le32toh(o.got_go),
				 le32toh(o.ran));
			return RDMAMIG_E_PROTO;
		}
	}
	return 0;
reserved:
	snprintf(why, whylen, "%s with reserved bits or fields set", rm_mig_type_name(type));
	return RDMAMIG_E_PROTO;
}

struct rm_mig_setup *rm_mig_setup_encode(const struct rdmamig_vm_desc *desc, uint32_t flags,
					 uint64_t migration_id, size_t *len)
{
	struct rm_mig_setup *s;

	if (desc->nr_regions > RDMAMIG_MAX_REGIONS) {
		errno = EINVAL;
		return NULL;
	}
	*len = sizeof(*s) + desc->nr_regions * sizeof(s->regions[0]);
	s = calloc(1, *len);
	if (!s)
		return NULL;
	s->version = htole32(RM_MIG_VERSION);
	s->page_size = htole32(desc->page_size);
	s->nr_vcpus = htole32(desc->nr_vcpus);
	s->payload_version = htole32(desc->payload_version);
	memcpy(s->cpu_model, desc->cpu_model, sizeof(s->cpu_model));
	s->cpu_model[sizeof(s->cpu_model) - 1] = '\0';
	s->nr_regions = htole32(desc->nr_regions);
	s->flags = htole32(flags);
	s->migration_id = htole64(migration_id);
	for (uint32_t i = 0; i < desc->nr_regions; i++) {
		s->regions[i].id = htole32(desc->regions[i].id);
		s->regions[i].size = htole64(desc->regions[i].size);
		s->regions[i].gpa = htole64(desc->regions[i].gpa);
	}
	return s;
}

int rm_mig_setup_decode(const void *buf, size_t len, struct rdmamig_vm_desc *desc,
			uint32_t *flags, uint64_t *migration_id, char *why, size_t whylen)
{
	struct rm_mig_setup s;
	uint32_t n;

	if (len < sizeof(s)) {
		snprintf(why, whylen, "SETUP of %zu bytes is shorter than its %zu-byte header", len,
			 sizeof(s));
		return RDMAMIG_E_PROTO;
	}
	memcpy(&s, buf, sizeof(s));
	if (le32toh(s.version) != RM_MIG_VERSION) {
		snprintf(why, whylen, "engine protocol version %u, this side speaks %u",
			 le32toh(s.version), RM_MIG_VERSION);
		return RDMAMIG_E_PROTO;
	}
	n = le32toh(s.nr_regions);
	if (n == 0 || n > RDMAMIG_MAX_REGIONS) {
		snprintf(why, whylen, "SETUP announces %u RAM regions (1..%u allowed)", n,
			 RDMAMIG_MAX_REGIONS);
		return RDMAMIG_E_PROTO;
	}
	if (len != sizeof(s) + (size_t)n * sizeof(struct rm_mig_region)) {
		snprintf(why, whylen, "SETUP is %zu bytes, %u regions need %zu", len, n,
			 sizeof(s) + (size_t)n * sizeof(struct rm_mig_region));
		return RDMAMIG_E_PROTO;
	}
	memset(desc, 0, sizeof(*desc));
	desc->page_size = le32toh(s.page_size);
	desc->nr_vcpus = le32toh(s.nr_vcpus);
	desc->payload_version = le32toh(s.payload_version);
	memcpy(desc->cpu_model, s.cpu_model, sizeof(desc->cpu_model));
	desc->cpu_model[sizeof(desc->cpu_model) - 1] = '\0';
	desc->nr_regions = n;
	*flags = le32toh(s.flags);
	*migration_id = le64toh(s.migration_id);
	if (!*migration_id) {
		snprintf(why, whylen, "SETUP carries no migration id");
		return RDMAMIG_E_PROTO;
	}
	if (desc->page_size < 4096 || desc->page_size > (1u << 30) ||
	    (desc->page_size & (desc->page_size - 1))) {
		snprintf(why, whylen, "page size %u is not a power of two in 4 KiB..1 GiB",
			 desc->page_size);
		return RDMAMIG_E_PROTO;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct rm_mig_region r;

		memcpy(&r, (const uint8_t *)buf + sizeof(s) + i * sizeof(r), sizeof(r));
		desc->regions[i].id = le32toh(r.id);
		desc->regions[i].size = le64toh(r.size);
		desc->regions[i].gpa = le64toh(r.gpa);
		if (!desc->regions[i].size || desc->regions[i].size % desc->page_size ||
		    desc->regions[i].size > (1ull << 46)) {
			snprintf(why, whylen, "region %u: size %llu is not a page multiple up to 64 TiB",
				 desc->regions[i].id, (unsigned long long)desc->regions[i].size);
			return RDMAMIG_E_PROTO;
		}
		for (uint32_t j = 0; j < i; j++) {
			if (desc->regions[j].id == desc->regions[i].id) {
				snprintf(why, whylen, "region id %u appears twice", desc->regions[i].id);
				return RDMAMIG_E_PROTO;
			}
		}
	}
	return 0;
}

int rm_mig_desc_compare(const struct rdmamig_vm_desc *src, const struct rdmamig_vm_desc *dst,
			char *why, size_t whylen)
{
	if (src->page_size != dst->page_size) {
		snprintf(why, whylen, "page size: source %u, destination %u", src->page_size,
			 dst->page_size);
		return -EINVAL;
	}
	if (src->nr_vcpus != dst->nr_vcpus) {
		snprintf(why, whylen, "vCPU count: source %u, destination %u", src->nr_vcpus,
			 dst->nr_vcpus);
		return -EINVAL;
	}
	if (strncmp(src->cpu_model, dst->cpu_model, sizeof(src->cpu_model))) {
		snprintf(why, whylen, "CPU model: source \"%.48s\", destination \"%.48s\"",
			 src->cpu_model, dst->cpu_model);
		return -EINVAL;
	}
	if (src->payload_version != dst->payload_version) {
		snprintf(why, whylen, "device-state version: source %u, destination %u",
			 src->payload_version, dst->payload_version);
		return -EINVAL;
	}
	if (src->nr_regions != dst->nr_regions) {
		snprintf(why, whylen, "RAM regions: source has %u, destination %u", src->nr_regions,
			 dst->nr_regions);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < src->nr_regions; i++) {
		const struct rdmamig_ram_region *a = &src->regions[i], *b = &dst->regions[i];

		if (a->id != b->id || a->size != b->size || a->gpa != b->gpa) {
			snprintf(why, whylen,
				 "RAM region %u: source id %u, %llu bytes at gpa %#llx; destination id %u, %llu bytes at gpa %#llx",
				 i, a->id, (unsigned long long)a->size, (unsigned long long)a->gpa, b->id,
				 (unsigned long long)b->size, (unsigned long long)b->gpa);
			return -EINVAL;
		}
	}
	return 0;
}
