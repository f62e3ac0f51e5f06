/* hostile: a guest that tries to make single register accesses expensive, for the
 * bounded-work tests (not part of the QEMU comparison: it never ends by itself).
 *   -DMODE=1 (hostile_invall): 57,344 LPIs seeded pending, then forever a full queue of
 *            INVALLs and MOVALLs, and GICR_INVALLR, polled to completion.
 *   -DMODE=2 (hostile_toggle): the same LPIs, then GICR_CTLR.EnableLPIs toggled forever
 *            (each enable reads the whole pending table, each disable writes it back).
 * Every wait polls the register the architecture says to poll (GITS_CREADR, GICR_CTLR.RWP,
 * GICR_SYNCR), with no bound: only the host's --timeout ends the run. */
#include "rt.h"

#define GICR_SYNCR 0x00C0
#define GICR_INVALLR 0x00B0

static void seed(struct gic_cpu *c)
{
	u8 *pend = (u8 *)c->pend;
	for (u64 i = LPI_BASE / 8; i < (1UL << lpi_idbits) / 8; i++)
		pend[i] = 0xff;
	dsb(sy);
}

int main(void)
{
	printf("hostile mode %d\n", MODE);
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor");
	gic_lpi_tables_alloc(16);
	for (u64 i = 0; i < (1UL << 16) - LPI_BASE; i++)
		lpi_prop[i] = 0xa0 | 3;
	gic_lpi_pend_alloc(0);
	seed(&gic_cpus[0]);
	gic_lpi_enable(0);
	u64 rd = gic_cpus[0].rd;
#if MODE == 1
	if (its_init(0, 0))
		fail("ITS init");
	u64 rd0 = its_rdbase(0);
	its_must(its_mapc(0, rd0, 1), "MAPC ICID 0 -> cpu0");
	printf("flooding the queue\n");
	for (u64 round = 0;; round++) {
		for (u32 i = 0; i < its.cmdq_bytes / 32 - 1; i++) {
			if (i % 2)
				its_queue(0x0d, 0, 0, 0); /* INVALL ICID 0 */
			else
				its_queue(0x0e, 0, rd0, rd0); /* MOVALL cpu0 -> cpu0 */
		}
		dsb(sy);
		w64(its.base + GITS_CWRITER, its.wr);
		while ((its_creadr() & 0xfffe0) != its.wr)
			cpu_relax();
		w32(rd + GICR_INVALLR, 0);
		while (r32(rd + GICR_SYNCR) & 1)
			cpu_relax();
		if (round % 16 == 0)
			printf("round %lu\n", round);
	}
#else
	printf("toggling EnableLPIs\n");
	for (u64 round = 0;; round++) {
		w32(rd + GICR_CTLR, 0);
		while (r32(rd + GICR_CTLR) & BIT(3)) /* RWP */
			cpu_relax();
		w32(rd + GICR_CTLR, 1);
		while (r32(rd + GICR_SYNCR) & 1)
			cpu_relax();
		if (round % 16 == 0)
			printf("round %lu\n", round);
	}
#endif
	return 0;
}
