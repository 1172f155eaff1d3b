/*
 * fuzz/fuzz.h — what the libFuzzer targets share: a bounded reader over the
 * fuzzer's input, and a check that holds even in a build without asserts
 * (a failed one is a crash, so libFuzzer keeps the input).
 */
#ifndef RDMAMIG_FUZZ_H
#define RDMAMIG_FUZZ_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input, taken from the front. */
struct fz_in {
	const uint8_t *p;
	size_t left;
};

/* n bytes (or NULL when fewer are left: the input ends there). */
static inline const uint8_t *fz_take(struct fz_in *in, size_t n)
{
	const uint8_t *p = in->p;

	if (in->left < n)
		return NULL;
	in->p += n;
	in->left -= n;
	return p;
}

static inline int fz_u8(struct fz_in *in)
{
	const uint8_t *p = fz_take(in, 1);

	return p ? *p : -1;
}

/* An invariant the code under test promises: breaking it is a finding. */
#define FZ_CHECK(cond)                                                                     \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, \
				#cond);                                                    \
			abort();                                                           \
		}                                                                          \
	} while (0)

#endif
