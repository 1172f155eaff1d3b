/* common/error.c — error text and the library version. */
#include <string.h>

#include "common/log.h"

#define STR_(x) #x
#define STR(x) STR_(x)

RM_EXPORT const char *rdmamig_version(void)
{
	return STR(RDMAMIG_VERSION_MAJOR) "." STR(RDMAMIG_VERSION_MINOR) "." STR(RDMAMIG_VERSION_PATCH);
}

RM_EXPORT const char *rdmamig_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case RDMAMIG_E_PROTO:
		return "the peer broke the wire protocol";
	case RDMAMIG_E_REFUSED:
		return "the peer refused the handshake";
	case RDMAMIG_E_ABORTED:
		return "migration aborted";
	case RDMAMIG_E_WC:
		return "an RDMA work request failed";
	case RDMAMIG_E_VERIFY:
		return "guest RAM differs between source and destination";
	case RDMAMIG_E_AUTH:
		return "the peer did not prove the pre-shared key: wrong key or none; "
		       "check --psk on both sides";
	case RDMAMIG_E_INDOUBT:
		return "the outcome of the handover is unknown; the guest stays paused";
	}
	if (err < 0 && err > -4096)
		return strerror(-err);
	return "unknown error";
}
