/* Identity-mapped stage-1 tables for EL1 (TTBR0), 4 KB or 64 KB granule (16 KB when the
 * CPU implements it). 0-1 GB: Device-nGnRnE (GIC, UART); 1-2 GB: Normal write-back, with
 * the first block of RAM split into level-3 pages so that every table level is walked. */
#include "rt.h"

#define D_TABLE 3UL
#define D_BLOCK 1UL
#define D_PAGE 3UL
#define D_AF BIT(10)
#define D_ISH (3UL << 8)
#define D_XN (BIT(53) | BIT(54))
#define ATTR_DEV (0UL << 2)
#define ATTR_NORM (1UL << 2)

static u64 mmu_mair, mmu_tcr, mmu_ttbr;

static u64 *table(u32 granule)
{
	return alloc(granule, granule);
}

int mmu_enable(u32 granule)
{
	u64 mmfr0 = read_sysreg(id_aa64mmfr0_el1);
	u64 dev = ATTR_DEV | D_AF | D_XN;
	u64 norm = ATTR_NORM | D_AF | D_ISH;
	u64 tg0;
	u64 *root;

	if (granule == 0x1000) {
		if (((mmfr0 >> 28) & 0xf) == 0xf)
			return -1;
		/* T0SZ=32: level 1 start, 4 entries of 1 GB */
		u64 *l1 = table(granule), *l2d = table(granule), *l2n = table(granule), *l3 = table(granule);
		for (u64 i = 0; i < 512; i++) {
			l2d[i] = (i << 21) | dev | D_BLOCK;
			l2n[i] = (RAM_BASE + (i << 21)) | norm | D_BLOCK;
			l3[i] = (RAM_BASE + (i << 12)) | norm | D_PAGE;
		}
		l2n[0] = (u64)l3 | D_TABLE;
		l1[0] = (u64)l2d | D_TABLE;
		l1[1] = (u64)l2n | D_TABLE;
		root = l1;
		tg0 = 0;
	} else if (granule == 0x10000) {
		if (((mmfr0 >> 24) & 0xf) == 0xf)
			return -1;
		/* T0SZ=32: level 2 start, 8 entries of 512 MB */
		u64 *l2 = table(granule), *l3 = table(granule);
		for (u64 i = 0; i < 8192; i++)
			l3[i] = (RAM_BASE + (i << 16)) | norm | D_PAGE;
		l2[0] = 0 | dev | D_BLOCK;
		l2[1] = (1UL << 29) | dev | D_BLOCK;
		l2[2] = (u64)l3 | D_TABLE;
		l2[3] = (RAM_BASE + (1UL << 29)) | norm | D_BLOCK;
		root = l2;
		tg0 = 1;
	} else if (granule == 0x4000) {
		if (((mmfr0 >> 20) & 0xf) == 0)
			return -1;
		/* T0SZ=32: level 2 start, 128 entries of 32 MB */
		u64 *l2 = table(granule), *l3 = table(granule);
		for (u64 i = 0; i < 2048; i++)
			l3[i] = (RAM_BASE + (i << 14)) | norm | D_PAGE;
		for (u64 i = 0; i < 32; i++)
			l2[i] = (i << 25) | dev | D_BLOCK;
		for (u64 i = 32; i < 64; i++)
			l2[i] = ((i << 25)) | norm | D_BLOCK;
		l2[32] = (u64)l3 | D_TABLE;
		root = l2;
		tg0 = 2;
	} else {
		return -1;
	}

	mmu_mair = 0x00UL | (0xffUL << 8);        /* attr0 Device-nGnRnE, attr1 Normal WB RaWa */
	mmu_tcr = 32UL | (1UL << 8) | (1UL << 10) | (3UL << 12) | (tg0 << 14) | BIT(23);
	mmu_ttbr = (u64)root;
	dsb(sy);
	mmu_enable_secondary();
	return 0;
}

void mmu_enable_secondary(void)
{
	write_sysreg(mair_el1, mmu_mair);
	write_sysreg(tcr_el1, mmu_tcr);
	write_sysreg(ttbr0_el1, mmu_ttbr);
	isb();
	__asm__ volatile("tlbi vmalle1\n dsb nsh\n ic iallu\n dsb nsh\n isb" ::: "memory");
	u64 sctlr = read_sysreg(sctlr_el1);
	sctlr |= BIT(0) | BIT(2) | BIT(12); /* M, C, I */
	sctlr &= ~BIT(1);                   /* A: alignment checks off */
	write_sysreg(sctlr_el1, sctlr);
	isb();
}
