/* its_pending_seed: software writes LPI pending bits into the pending table before setting
 * GICR_CTLR.EnableLPIs (PENDBASER.PTZ=0); the redistributor must pick them up and the CPU
 * interface hands them out by priority, lowest INTID first among equal priorities. A seeded
 * LPI that is disabled stays pending until it is enabled (INV through an ITS mapping). */
#include "rt.h"

struct seed {
	u32 intid;
	u8 prio;
	u8 enabled;
};
static const struct seed seeds[] = {
	{8192, 0x80, 1}, {8200, 0x40, 1}, {8201, 0x40, 1}, {8300, 0x20, 1}, {9000, 0x80, 1},
	{12000, 0x40, 1}, {16383, 0x10, 1}, {8199, 0x10, 0}, {8250, 0x40, 1}, {10000, 0x80, 1},
};
#define NSEED (sizeof(seeds) / sizeof(seeds[0]))
static const u32 order[] = {16383, 8300, 8200, 8201, 8250, 12000, 8192, 9000, 10000};
#define NORDER (sizeof(order) / sizeof(order[0]))

int main(void)
{
	printf("its_pending_seed: LPIs seeded in the pending table before EnableLPIs\n");
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	gic_lpi_tables_alloc(14);
	gic_lpi_pend_alloc(0);
	volatile u8 *pend = (volatile u8 *)gic_cpus[0].pend;
	for (u32 i = 0; i < NSEED; i++) {
		const struct seed *s = &seeds[i];
		lpi_config(s->intid, s->prio, s->enabled);
		pend[s->intid / 8] |= (u8)(1U << (s->intid % 8));
		printf("seed LPI %u: priority 0x%x, %s\n", s->intid, s->prio, s->enabled ? "enabled" : "disabled");
	}
	dsb(sy);
	check(!(r32(gic_cpus[0].rd + GICR_CTLR) & 1), "GICR_CTLR.EnableLPIs was 0 while seeding");
	gic_lpi_enable(0);
	check(r32(gic_cpus[0].rd + GICR_CTLR) & 1, "GICR_CTLR.EnableLPIs now 1");

	printf("-- acknowledge until nothing is pending\n");
	u32 got[16], n = 0;
	for (; n < 16; n++) {
		u32 id = gic_poll_ack(n < NORDER ? 2000000 : 2000);
		if (id == INTID_SPURIOUS)
			break;
		got[n] = id;
		u64 rpr = icc_read(ICC_RPR_EL1);
		printf("IAR1 %u (running priority 0x%lx)\n", id, rpr);
		gic_eoi(id);
	}
	int same = n == NORDER;
	for (u32 k = 0; same && k < n; k++)
		same = got[k] == order[k];
	check(same, "all %u enabled seeded LPIs, by priority then INTID", (u32)NORDER);
	check(gic_ack() == INTID_SPURIOUS, "disabled LPI 8199 not delivered");

	printf("-- enable LPI 8199 through an ITS mapping + INV\n");
	if (its_init(0, 0x1000))
		fail("ITS init");
	its_must(its_mapc(0, its_rdbase(0), 1), "MAPC ICID 0 -> cpu0");
	its_must(its_mapd_alloc(0, 2), "MAPD DeviceID 0");
	its_must(its_mapti(0, 1, 8199, 0), "MAPTI EventID 1 -> LPI 8199");
	lpi_config(8199, 0x10, 1);
	its_must(its_inv(0, 1), "INV EventID 1");
	expect_ack(8199, "seeded LPI 8199 once enabled");
	expect_ack(INTID_SPURIOUS, "nothing left");
	its_translate(1);
	expect_ack(8199, "and it still works as an MSI");
	pass();
	return 0;
}
