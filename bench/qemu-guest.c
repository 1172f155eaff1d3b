/*
 * bench/qemu-guest.c — the guest that QEMU migrates in bench/qemu-peer: a
 * Multiboot (v1) ELF32 that QEMU boots with -kernel, so the comparison needs
 * no Linux (which does not boot in useful time on a kvm-pvm host, and would
 * bring memory that rdmamig's built-in guest does not have).
 *
 * It behaves like rdmamig's built-in guest under `--workload sweep:RATE`: it
 * writes one page at a time, in order, wrapping at the end of its work area,
 * RATE page writes per second (0: as fast as it can).  Before that it writes
 * every page of the work area once, flat out, so that all of it is non-zero
 * when the migration starts, as the built-in guest's RAM is after a warm-up
 * of at least pages/RATE seconds.  `idle` instead halts after that first
 * pass.  Each write stores a non-zero 64-bit word (page number and pass) at
 * the start of the page: a migration must send the whole page, and the
 * destination's copy can be told from a stale one.
 *
 * Command line (-append): [pages=N] [rate=PAGES_PER_S | idle]
 *   pages: how many pages to write, from 2 MiB up (default: all the RAM
 *   Multiboot reports).
 * It prints "filled <pages>" and then "tsc_khz <n>" on the debug console
 * (port 0xe9, QEMU's -debugcon), which is how the harness knows the guest
 * is ready to migrate.  It owns nothing else and touches nothing outside
 * bench/: built 32-bit and freestanding by bench/Build.mk.
 */
#include <stdint.h>

#define PAGE		4096u
#define WORK_START	(2u << 20)	/* above this image, its stack and the Multiboot data */
#define MB_MAGIC	0x1badb002u
#define MB_FLAGS	0x00000002u	/* give us the memory fields */
#define MB_INFO_MEM	0x1u
#define MB_INFO_CMDLINE	0x4u

struct mb_info {
	uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
};

__attribute__((section(".multiboot"), used, aligned(4)))
static const uint32_t mb_header[3] = { MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS) };

__attribute__((used)) static uint8_t stack[16384] __attribute__((aligned(16)));

/* Multiboot enters in 32-bit protected mode with EBX = the info block and
 * no stack. */
__asm__(".section .text.entry, \"ax\"\n"
	".globl _start\n"
	"_start:\n"
	"	mov $stack + 16384, %esp\n"
	"	push %ebx\n"
	"	call guest_main\n"
	"1:	cli\n"
	"	hlt\n"
	"	jmp 1b\n"
	".previous\n");

static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint64_t v;

	__asm__ volatile("rdtsc" : "=A"(v));
	return v;
}

/* 64-by-32-bit division with a 32-bit quotient (the caller makes sure it
 * fits): a freestanding 32-bit build has no libgcc for 64-bit division. */
static inline uint32_t div32(uint64_t n, uint32_t d)
{
	uint32_t q, r;

	__asm__("divl %4" : "=a"(q), "=d"(r) : "a"((uint32_t)n), "d"((uint32_t)(n >> 32)), "rm"(d));
	return q;
}

static void put(const char *s)
{
	while (*s)
		outb(0xe9, (uint8_t)*s++);
}

static void put_u(uint32_t v)
{
	char buf[24], *p = buf + sizeof(buf) - 1;

	*p = 0;
	do
		*--p = (char)('0' + v % 10);
	while (v /= 10);
	put(p);
}

/* TSC ticks in 50 ms of PIT channel 2 (the classic calibration: gate on,
 * speaker off, mode 0, poll the output bit in port 0x61).  Under TCG the PIT
 * follows QEMU's virtual clock, which tracks the host's, as does RDTSC. */
static uint64_t tsc_khz(void)
{
	const uint32_t latch = 1193182 / 20;
	uint64_t t0, t1;

	outb(0x61, (uint8_t)((inb(0x61) & ~0x02) | 0x01));
	outb(0x43, 0xb0);
	outb(0x42, latch & 0xff);
	outb(0x42, latch >> 8);
	t0 = rdtsc();
	while (!(inb(0x61) & 0x20))
		;
	t1 = rdtsc();
	/* 50 ms of even a 80 GHz TSC fits 32 bits. */
	return div32(t1 - t0, 50);
}

/* A decimal number after `key=` in the command line; `def` without one. */
static uint64_t arg(const char *cmd, const char *key, uint64_t def, int *found)
{
	for (const char *c = cmd; c && *c; c++) {
		const char *k = key, *p = c;
		uint64_t v = 0;

		if (c != cmd && c[-1] != ' ')
			continue;
		while (*k && *p == *k)
			k++, p++;
		if (*k)
			continue;
		if (*p != '=') {
			if (!*p || *p == ' ') {
				if (found)
					*found = 1;
				return def;
			}
			continue;
		}
		for (p++; *p >= '0' && *p <= '9'; p++)
			v = v * 10 + (uint64_t)(*p - '0');
		if (found)
			*found = 1;
		return v;
	}
	return def;
}

static inline void write_page(uint32_t page, uint32_t pass)
{
	*(volatile uint64_t *)(uintptr_t)(WORK_START + page * PAGE) =
		((uint64_t)(pass + 1) << 32) | (page + 1);
}

void guest_main(const struct mb_info *mbi);

void guest_main(const struct mb_info *mbi)
{
	const char *cmd = (mbi->flags & MB_INFO_CMDLINE) ? (const char *)(uintptr_t)mbi->cmdline : 0;
	/* mem_upper: KiB of RAM from 1 MiB up to the first hole (below 4 GiB). */
	uint64_t ram_end = (mbi->flags & MB_INFO_MEM) ? ((uint64_t)mbi->mem_upper + 1024) * 1024 : 0;
	uint64_t avail = ram_end > WORK_START ? ram_end - WORK_START : 0;
	uint64_t work = arg(cmd, "pages", 0, 0) * PAGE;
	int idle = 0;
	uint64_t rate = arg(cmd, "rate", 0, 0), khz, ticks, deadline;
	uint32_t pages, page = 0, pass = 0;

	/* 1000 * tsc_khz / rate must fit 32 bits: 2 writes/s or more. */
	if (rate == 1)
		rate = 2;
	if (rate > 1000000000)
		rate = 0;
	arg(cmd, "idle", 0, &idle);
	if (!work || work > avail)
		work = avail;
	pages = (uint32_t)(work / PAGE);
	if (!pages) {
		put("no RAM to write\n");
		return;
	}
	for (uint32_t i = 0; i < pages; i++)
		write_page(i, 0);
	put("filled ");
	put_u(pages);
	put("\n");
	khz = tsc_khz();
	put("tsc_khz ");
	put_u((uint32_t)khz);
	put("\n");
	if (idle)
		return;

	/* The sweep, paced as rdmamig's built-in guest paces it: one deadline
	 * per page write, and no credit banked across a pause (a resumed guest
	 * must not burst). */
	ticks = rate ? div32(khz * 1000, (uint32_t)rate) : 0;
	deadline = rdtsc();
	for (pass = 1;; ) {
		write_page(page, pass);
		if (++page == pages) {
			page = 0;
			pass++;
		}
		if (ticks) {
			deadline += ticks;
			if (rdtsc() > deadline + 1000 * ticks)
				deadline = rdtsc();
			while (rdtsc() < deadline)
				__asm__ volatile("pause");
		}
	}
}
