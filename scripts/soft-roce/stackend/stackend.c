// SPDX-License-Identifier: GPL-2.0
/*
 * stackend.ko — a diagnostic for the test-bed VM's "corrupted stack end
 * detected inside scheduler" panic (issue 10); built and loaded only by
 * scripts/soft-roce/stackend/run.sh, never part of the bed or of a test.
 *
 * A kprobe on panic() dumps, for the task that panics, what its kernel
 * stack holds at the bottom: the bottom 256 bytes, and the lowest offset
 * above the end word that is not zero.  Stacks start zeroed, so a stack that
 * ran into its end leaves used words all the way down, while a stray write
 * leaves the end word corrupted above a gap of zeros; the words written show
 * what wrote them.
 */
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/task_stack.h>
#include <linux/vmalloc.h>

static int on_panic(struct kprobe *p, struct pt_regs *regs)
{
	const unsigned long *s = (const unsigned long *)task_stack_page(current);
	unsigned long n = THREAD_SIZE / sizeof(*s), lowest = n;
	unsigned long pfn = is_vmalloc_addr(s) ? vmalloc_to_pfn(s) : 0;

	for (unsigned long i = 1; i < n; i++) {
		if (s[i]) {
			lowest = i;
			break;
		}
	}
	pr_emerg("stackend: %s[%d]: stack %px (pfn %#lx), end word %#lx (magic %#lx); lowest used word above it at byte %lu of %lu (%lu bytes never used)\n",
		 current->comm, current->pid, s, pfn, s[0], (unsigned long)STACK_END_MAGIC,
		 lowest * sizeof(*s), (unsigned long)THREAD_SIZE, (lowest - 1) * sizeof(*s));
	for (unsigned long i = 0; i < 32; i += 4)
		pr_emerg("stackend: +%03lx: %016lx %016lx %016lx %016lx\n", i * sizeof(*s), s[i], s[i + 1],
			 s[i + 2], s[i + 3]);
	return 0;
}

static struct kprobe kp = { .symbol_name = "panic", .pre_handler = on_panic };

static int __init stackend_init(void)
{
	return register_kprobe(&kp);
}

static void __exit stackend_exit(void)
{
	unregister_kprobe(&kp);
}

module_init(stackend_init);
module_exit(stackend_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("rdmamig test bed: what overwrote a task's stack end at panic");
