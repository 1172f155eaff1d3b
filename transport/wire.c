/*
 * transport/wire.c — the small pieces of wire.h that are not inline: header
 * and text fields, and names of types and refusal reasons for logs.
 */
#include <string.h>

#include "transport/wire.h"

void rm_wire_hdr_init(struct rm_wire_hdr *h, uint16_t type, uint16_t flags, size_t len,
		      uint32_t credits)
{
	*h = (struct rm_wire_hdr){
		.type = rm_wire_put16(type),
		.flags = rm_wire_put16(flags),
		.len = rm_wire_put32((uint32_t)len),
		.credits = rm_wire_put32(credits),
	};
}

void rm_wire_text(char *dst, const char *src)
{
	size_t n = src ? strnlen(src, RM_WIRE_TEXT - 1) : 0;

	memset(dst, 0, RM_WIRE_TEXT);
	if (n)
		memcpy(dst, src, n);
}

static const char *const type_names[] = {
	[RM_WIRE_INVALID] = "INVALID",
	[RM_WIRE_HELLO] = "HELLO",
	[RM_WIRE_HELLO_ACK] = "HELLO_ACK",
	[RM_WIRE_REFUSE] = "REFUSE",
	[RM_WIRE_LAYOUT] = "LAYOUT",
	[RM_WIRE_WRITE] = "WRITE",
	[RM_WIRE_MARKER] = "MARKER",
	[RM_WIRE_CTRL] = "CTRL",
	[RM_WIRE_CREDIT] = "CREDIT",
	[RM_WIRE_ABORT] = "ABORT",
	[RM_WIRE_BYE] = "BYE",
	[RM_WIRE_AUTH] = "AUTH",
	[RM_WIRE_KEEPALIVE] = "KEEPALIVE",
	[RM_WIRE_READY] = "READY",
};

const char *rm_wire_type_name(unsigned type)
{
	if (type < sizeof(type_names) / sizeof(type_names[0]) && type_names[type])
		return type_names[type];
	if (type >= RM_WIRE_ENGINE_FIRST && type <= RM_WIRE_ENGINE_LAST)
		return "ENGINE";
	return "UNKNOWN";
}

static const char *const refuse_names[] = {
	[RM_REFUSE_VERSION] = "no common protocol version",
	[RM_REFUSE_CAPS] = "required capability missing",
	[RM_REFUSE_CHANNELS] = "channel count or index out of range",
	[RM_REFUSE_LAYOUT] = "RAM layouts differ",
	[RM_REFUSE_BUSY] = "destination busy",
	[RM_REFUSE_MAGIC] = "not an rdmamig peer",
	[RM_REFUSE_PARAMS] = "write size or credits out of range",
	[RM_REFUSE_AUTH] = "authentication failed",
	[RM_REFUSE_TLS] = "TLS required",
};

const char *rm_wire_refuse_name(unsigned reason)
{
	if (reason < sizeof(refuse_names) / sizeof(refuse_names[0]) && refuse_names[reason])
		return refuse_names[reason];
	return "unknown reason";
}
