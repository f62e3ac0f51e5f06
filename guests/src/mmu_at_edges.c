/* mmu_at_edges: address translation (AT S1E1R/W) at the edges of TCR_EL1: the smallest
 * input address ranges (T0SZ 39 with 4 KB pages, 48 with 64 KB), a VA beyond T0SZ's range
 * and one above it in the TTBR1 half with EPD1=1. Each AT must give a translation fault
 * in PAR_EL1 (F=1) or a valid PA, never stop the machine. */
#include "rt.h"

static u64 at_read(u64 va)
{
	u64 par;
	__asm__ volatile("at s1e1r, %1\n isb\n mrs %0, par_el1" : "=r"(par) : "r"(va) : "memory");
	return par;
}

int main(void)
{
	printf("mmu_at_edges: AT S1E1R at the edges of TCR_EL1\n");
	if (mmu_enable(0x1000))
		fail("no 4 KB granule");
	u64 tcr = read_sysreg(tcr_el1);
	printf("[impl] TCR_EL1 0x%lx\n", tcr);
	u64 par = at_read(RAM_BASE + 0x1000);
	check(!(par & 1), "AT of mapped RAM succeeds");
	printf("[impl] PAR_EL1 0x%lx\n", par);
	par = at_read(1UL << 40);
	check(par & 1, "AT of a VA beyond T0SZ's range gives a fault in PAR_EL1");
	printf("[impl] PAR_EL1 0x%lx\n", par);
	par = at_read(0xffff000000001000UL);
	check(par & 1, "AT of a TTBR1 VA with EPD1=1 gives a fault in PAR_EL1");
	printf("[impl] PAR_EL1 0x%lx\n", par);
	pass();
	return 0;
}
