/* bench_loop: guest code alone, no device traffic, timed with the virtual counter.
 *
 * Two loops of known instruction counts, each timed with CNTVCT:
 *   alu  4 instructions per iteration: add, eor, subs, b.ne (one translated block)
 *   mem  7 instructions per iteration: a load and a store walking a 64 KB array
 * Each prints "[impl] bench loop NAME iters N insns I ticks T freq F" (I instructions per
 * iteration; raw CNTVCT ticks, which the host turns into MIPS) and the transcript ends in
 * PASS when the results are the ones computed here. bench/run.py runs it under
 * `vgic run` and under QEMU. */
#include "rt.h"

#ifndef ITERS_ALU
#define ITERS_ALU 100000000UL
#endif
#ifndef ITERS_MEM
#define ITERS_MEM 20000000UL
#endif

static u64 array[8192] __attribute__((aligned(64))); /* 64 KB */

static u64 cntvct(void)
{
	isb();
	return read_sysreg(cntvct_el0);
}

static void report(const char *name, u64 iters, u32 insns, u64 ticks, u64 freq)
{
	printf("[impl] bench loop %s iters %lu insns %u ticks %lu freq %lu\n", name, iters, insns, ticks, freq);
}

static u64 alu(u64 n)
{
	u64 a = 1, b = 2;
	__asm__ volatile("1: add %0, %0, %1\n"
			 "   eor %1, %1, %0, lsl #3\n"
			 "   subs %2, %2, #1\n"
			 "   b.ne 1b\n"
			 : "+r"(a), "+r"(b), "+r"(n)
			 :
			 : "cc");
	return a ^ b;
}

static u64 alu_expected(u64 n)
{
	u64 a = 1, b = 2;
	for (u64 i = 0; i < n; i++) {
		a += b;
		b ^= a << 3;
	}
	return a ^ b;
}

static void mem(u64 n)
{
	u64 off = 0, x = 1;
	__asm__ volatile("1: ldr x9, [%[base], %[off]]\n"
			 "   add x9, x9, %[x]\n"
			 "   str x9, [%[base], %[off]]\n"
			 "   add %[off], %[off], #8\n"
			 "   and %[off], %[off], #0xfff8\n"
			 "   subs %[n], %[n], #1\n"
			 "   b.ne 1b\n"
			 : [off] "+r"(off), [n] "+r"(n)
			 : [base] "r"(array), [x] "r"(x)
			 : "x9", "cc", "memory");
}

int main(void)
{
	u64 freq = read_sysreg(cntfrq_el0);
	printf("bench_loop: guest code alone\n");
	u64 check_n = 1000;
	u64 want = alu_expected(check_n);
	check(alu(check_n) == want, "the alu loop computes what C does");

	u64 t0 = cntvct();
	u64 r = alu(ITERS_ALU);
	report("alu", ITERS_ALU, 4, cntvct() - t0, freq);

	t0 = cntvct();
	mem(ITERS_MEM);
	report("mem", ITERS_MEM, 7, cntvct() - t0, freq);
	u64 sum = 0;
	for (u32 i = 0; i < 8192; i++)
		sum += array[i];
	check(sum == ITERS_MEM, "every store of the mem loop landed");
	printf("[impl] alu result %lx\n", r);
	pass();
	return 0;
}
