/* its_mmu: the basic ITS flow with the MMU and caches on (identity map; RAM Normal
 * write-back, GIC/UART Device-nGnRnE) on two CPUs: ITS tables, command queue and LPI tables
 * live in cacheable memory, described to the GIC as Inner Shareable write-back. */
#include "rt.h"

#ifndef GRANULE
#define GRANULE 0x1000
#endif
#define NCPU 2
#define DEV 0

void secondary_main(u64 ctx)
{
	mmu_enable_secondary();
	secondary_idle((int)ctx);
}

int main(void)
{
	printf("its_mmu: ITS with the MMU and caches on, %u KB granule, %d CPUs\n", GRANULE / 1024, NCPU);
	printf("[impl] ID_AA64MMFR0_EL1 0x%lx\n", read_sysreg(id_aa64mmfr0_el1));
	if (mmu_enable(GRANULE))
		fail("granule %u KB not supported", GRANULE / 1024);
	u64 sctlr = read_sysreg(sctlr_el1);
	check((sctlr & 0x1005) == 0x1005, "SCTLR_EL1 M, C and I set");
	printf("[impl] SCTLR_EL1 0x%lx TCR_EL1 0x%lx MAIR_EL1 0x%lx\n", sctlr, read_sysreg(tcr_el1),
	       read_sysreg(mair_el1));
	/* a translation check through AT: RAM and a device address map to themselves */
	__asm__ volatile("at s1e1r, %0" ::"r"((u64)&its) : "memory");
	isb();
	u64 par = read_sysreg(par_el1);
	check(!(par & 1) && (par & 0xfffffffff000UL) == ((u64)&its & ~0xfffUL), "AT S1E1R of a RAM address: identity");
	check(((par >> 56) & 0xff) == 0xff, "RAM attributes Normal write-back (PAR_EL1.ATTR 0xff)");
	__asm__ volatile("at s1e1r, %0" ::"r"(GITS_BASE) : "memory");
	isb();
	par = read_sysreg(par_el1);
	check(!(par & 1) && (par & 0xfffffffff000UL) == GITS_BASE, "AT S1E1R of the ITS: identity");
	check(((par >> 56) & 0xff) == 0x00, "ITS attributes Device-nGnRnE (PAR_EL1.ATTR 0x00)");

	gic_lpi_bringup(NCPU, 14);
	if (its_init(0, GRANULE))
		fail("ITS init");
	printf("[impl] device table BASER 0x%lx (page %u)\n", its.dev.baser, its.dev.page);
	int up = smp_start(NCPU);
	printf("CPUs running: %d\n", up);
	if (up != NCPU)
		fail("need %d CPUs", NCPU);
	irq_enable();

	for (int c = 0; c < NCPU; c++)
		its_must(its_mapc((u32)c, its_rdbase(c), 1), "MAPC ICID %d -> cpu%d", c, c);
	its_must(its_mapd_alloc(DEV, 4), "MAPD DeviceID 0");
	for (u32 ev = 0; ev < 4; ev++) {
		lpi_config(LPI_BASE + ev, 0xa0, 1);
		its_must(its_mapti(DEV, ev, LPI_BASE + ev, ev % NCPU), "MAPTI EventID %u -> LPI %u ICID %u", ev,
			 LPI_BASE + ev, ev % NCPU);
	}
	for (u32 ev = 0; ev < 4; ev++) {
		u32 c = ev % NCPU, before = irq_logs[c].n;
		if (ev < 2)
			its_translate(ev);
		else
			its_must(its_int(DEV, ev), "INT EventID %u", ev);
		irq_log_wait((int)c, before + 1, 20000000);
	}
	/* priority change through the cached configuration table + INV */
	lpi_config(LPI_BASE + 1, 0xa0, 0);
	its_must(its_inv(DEV, 1), "INV EventID 1 (disabled)");
	its_translate(1);
	for (volatile u32 i = 0; i < 200000; i++)
		;
	lpi_config(LPI_BASE + 1, 0xa0, 1);
	its_must(its_inv(DEV, 1), "INV EventID 1 (enabled)");
	irq_log_wait(1, 3, 20000000);

	dmb(sy);
	for (int c = 0; c < NCPU; c++) {
		irq_log_print(c);
	}
	check(irq_logs[0].n == 2 && irq_logs[0].ids[0] == 8192 && irq_logs[0].ids[1] == 8194, "cpu0 got 8192 8194");
	check(irq_logs[1].n == 3 && irq_logs[1].ids[0] == 8193 && irq_logs[1].ids[1] == 8195 && irq_logs[1].ids[2] == 8193,
	      "cpu1 got 8193 8195 8193");
	pass();
	return 0;
}
