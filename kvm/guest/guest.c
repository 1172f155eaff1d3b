/*
 * kvm/guest/guest.c — the payload every vCPU runs: freestanding C, 64-bit
 * long mode, identity-mapped, interrupts off.  The host enters guest_entry
 * with RDI = vCPU index and RSP at the top of that vCPU's stack; nothing here
 * returns.  Each vCPU writes only its own share of the work pages and checks
 * each page against the generation table before rewriting it, reporting
 * progress and any failed check through I/O ports (see abi.h).
 */
#include "kvm/guest/abi.h"

/*
 * Exception stubs, 16 bytes apart: push a zero error code where the CPU
 * pushes none, push the vector, and report both with the faulting RIP and
 * CR2 on the EXCEPTION port.  Without them any exception would be a triple
 * fault, and the host would see only that the vCPU was reset.
 */
__asm__(
	".pushsection .text\n"
	".macro RM_VEC n\n"
	".balign 16\n"
	".if (\\n == 8) || (\\n >= 10 && \\n <= 14) || (\\n == 17) || (\\n == 21) || (\\n == 29) || (\\n == 30)\n"
	".else\n"
	"	pushq $0\n"
	".endif\n"
	"	pushq $\\n\n"
	"	jmp rm_exception\n"
	".endm\n"
	".balign 16\n"
	"rm_vectors:\n"
	".irp n,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
	"	RM_VEC \\n\n"
	".endr\n"
	"rm_exception:\n"
	"	movl (%rsp), %eax\n"
	"	movq 8(%rsp), %rbx\n"
	"	movq 16(%rsp), %rcx\n"
	"	movq %cr2, %rdx\n"
	"	outl %eax, $" "0xec" "\n"
	"1:	hlt\n"
	"	jmp 1b\n"
	".popsection\n");

extern const char rm_vectors[];

struct idt_gate {
	uint16_t off0;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off1;
	uint32_t off2;
	uint32_t zero;
};

static struct idt_gate idt[32] __attribute__((aligned(16)));

/* Every vCPU writes the same gates, so the race between them is harmless. */
static void load_idt(void)
{
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = { sizeof(idt) - 1, (uint64_t)idt };

	for (int i = 0; i < 32; i++) {
		uint64_t a = (uint64_t)rm_vectors + 16 * (uint64_t)i;

		idt[i] = (struct idt_gate){
			.off0 = (uint16_t)a, .sel = RM_GUEST_SEL_CODE, .type = 0x8e,
			.off1 = (uint16_t)(a >> 16), .off2 = (uint32_t)(a >> 32),
		};
	}
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

static inline void outl(uint16_t port, uint32_t val)
{
	__asm__ volatile("outl %0, %1" : : "a"(val), "Nd"(port) : "memory");
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static struct rm_guest_page_head *page_head(const struct rm_guest_params *p, uint64_t idx)
{
	for (uint32_t r = 0; r < p->nr_ranges; r++) {
		if (idx < p->ranges[r].pages)
			return (struct rm_guest_page_head *)(p->ranges[r].gpa + idx * RM_GUEST_PAGE);
		idx -= p->ranges[r].pages;
	}
	return 0;
}

/* Check page idx against its generation, then write its next generation.
 * Returns the stamp it wrote. */
static uint64_t write_page(const volatile struct rm_guest_params *vp, const struct rm_guest_params *p,
		       volatile uint32_t *meta, uint64_t idx)
{
	volatile struct rm_guest_page_head *h = page_head(p, idx);
	uint32_t gen = meta[idx];

	if (h->gen != gen || (gen && h->tag != rm_guest_tag(idx, gen)) || (!gen && h->tag))
		outl(RM_GUEST_PORT_ERROR, (uint32_t)idx);
	uint64_t stamp = vp->stamp;

	gen++;
	h->stamp = stamp;
	h->gen = gen;
	h->tag = rm_guest_tag(idx, gen);
	meta[idx] = gen;
	return stamp;
}

__attribute__((noreturn, section(".text.entry"), used))
void guest_entry(uint64_t vcpu);

void guest_entry(uint64_t vcpu)
{
	volatile struct rm_guest_params *vp = (void *)RM_GUEST_PARAMS_GPA;
	const struct rm_guest_params *p = (const void *)RM_GUEST_PARAMS_GPA;
	volatile uint32_t *meta = (volatile uint32_t *)p->meta_gpa;
	uint64_t first = vcpu * p->work_pages / p->nr_vcpus;
	uint64_t count = (vcpu + 1) * p->work_pages / p->nr_vcpus - first;
	uint64_t hot = count * p->hot_permille / 1000;
	uint64_t rng = p->seed * 2654435761u + vcpu * 0x9e3779b97f4a7c15ull + 1;
	uint64_t next = 0, done = 0, unreported = 0;
	/* TSC ticks per page write, for pacing; 0: unpaced. */
	uint64_t ticks = p->rate_pages_per_sec ? p->tsc_khz * 1000 / p->rate_pages_per_sec : 0;
	uint64_t deadline = rdtsc();
	uint32_t report_every = p->report_every ? p->report_every : 64;

	load_idt();
	if (p->magic != RM_GUEST_MAGIC || !count)
		goto idle;

	switch (p->workload) {
	case RM_GUEST_UNIFORM:
	case RM_GUEST_HOTSET:
	case RM_GUEST_SWEEP:
	case RM_GUEST_STAMP:
		break;
	default:
		goto idle;
	}

	for (;;) {
		uint64_t idx;

		switch (p->workload) {
		case RM_GUEST_SWEEP:
			idx = next++;
			if (next == count)
				next = 0;
			break;
		case RM_GUEST_HOTSET:
			if (hot && xorshift(&rng) % 1000 < p->hot_write_permille)
				idx = xorshift(&rng) % hot;
			else
				idx = hot + xorshift(&rng) % (count - hot ? count - hot : 1);
			if (idx >= count)
				idx = count - 1;
			break;
		default:
			idx = xorshift(&rng) % count;
			break;
		}
		vp->seen[vcpu][0] = write_page(vp, p, meta, first + idx);
		done++;
		if (++unreported == report_every) {
			outl(RM_GUEST_PORT_PROGRESS, (uint32_t)unreported);
			unreported = 0;
		}
		if (ticks) {
			deadline += ticks;
			/* Don't bank credit across a pause: a resumed guest must not burst. */
			if (rdtsc() > deadline + 1000 * ticks)
				deadline = rdtsc();
			while (rdtsc() < deadline)
				cpu_relax();
		}
	}

idle:
	for (;;) {
		for (uint32_t i = 0; i < 4096; i++)
			cpu_relax();
		outl(RM_GUEST_PORT_PROGRESS, 1);
	}
}
