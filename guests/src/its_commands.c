/* its_commands: every physical ITS command on one CPU, delivery polled through ICC_IAR1_EL1
 * with interrupts masked (PSTATE.I=1). */
#include "rt.h"

#define DEV_CPU 0 /* the DeviceID a plain CPU store to GITS_TRANSLATER carries on QEMU virt */
#define DEV_B 1   /* reachable through the INT command */
#define LPI(n) (LPI_BASE + (n))

static void report_its(void)
{
	printf("[impl] GITS_IIDR 0x%x GITS_TYPER 0x%lx PIDR2 0x%x\n", r32(its.base + GITS_IIDR),
	       its.typer, r32(its.base + GITS_PIDR2));
	printf("[impl] ITT entry %u bytes, EventID bits %u, DeviceID bits %u, ICID bits %u, PTA %d\n",
	       its.ite_size, its.idbits, its.devbits, its.cidbits, its.pta);
	printf("[impl] device table BASER%d entry %u bytes -> 0x%lx\n", its.dev.idx, its.dev.esz, its.dev.baser);
	if (its.coll.idx >= 0)
		printf("[impl] collection table BASER%d entry %u bytes -> 0x%lx\n", its.coll.idx,
		       its.coll.esz, its.coll.baser);
}

static void pmr(u8 v)
{
	icc_write(ICC_PMR_EL1, v);
	isb();
}

int main(void)
{
	printf("its_commands: every ITS command, polled delivery on cpu0\n");
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	gic_lpi_tables_alloc(14);
	for (u32 i = 0; i < 16; i++)
		lpi_config(LPI(i), 0x80, 1);
	lpi_config(LPI(8), 0x80, 1);
	gic_lpi_pend_alloc(0);
	gic_lpi_enable(0);
	printf("LPIs on: 14 INTID bits, LPIs 8192..8207 priority 0x80 enabled\n");
	printf("[impl] ICC_PMR_EL1 after writing 0xff: 0x%lx, ICC_CTLR_EL1 0x%lx\n",
	       icc_read(ICC_PMR_EL1), icc_read(ICC_CTLR_EL1));

	int r = its_init(0, 0x1000);
	report_its();
	if (r)
		fail("ITS init %d", r);
	printf("ITS enabled, command queue 64 KB\n");
	u64 rd0 = its_rdbase(0);

	its_must(its_mapc(0, rd0, 1), "MAPC ICID 0 -> cpu0");
	its_must(its_mapd_alloc(DEV_CPU, 4), "MAPD DeviceID %d, 4 EventID bits", DEV_CPU);
	its_must(its_mapd_alloc(DEV_B, 14), "MAPD DeviceID %d, 14 EventID bits", DEV_B);
	for (u32 ev = 0; ev < 4; ev++)
		its_must(its_mapti(DEV_CPU, ev, LPI(ev), 0), "MAPTI DeviceID %d EventID %u -> LPI %u ICID 0",
			 DEV_CPU, ev, LPI(ev));
	its_must(its_mapi(DEV_B, LPI(8), 0), "MAPI DeviceID %d EventID %u ICID 0", DEV_B, LPI(8));
	its_must(its_sync(rd0), "SYNC cpu0");

	printf("-- delivery\n");
	its_translate(0);
	expect_ack(LPI(0), "store EventID 0 to GITS_TRANSLATER");
	its_must(its_int(DEV_B, LPI(8)), "INT DeviceID %d EventID %u", DEV_B, LPI(8));
	expect_ack(LPI(8), "INT DeviceID 1 EventID 8200 (MAPI)");
	its_must(its_int(DEV_CPU, 1), "INT DeviceID 0 EventID 1");
	expect_ack(LPI(1), "INT DeviceID 0 EventID 1");
	expect_ack(INTID_SPURIOUS, "after EOI");

	printf("-- PMR masks, pending state is kept\n");
	pmr(0x00);
	its_must(its_int(DEV_CPU, 0), "INT EventID 0 with PMR 0");
	expect_ack(INTID_SPURIOUS, "masked by PMR");
	pmr(0xff);
	expect_ack(LPI(0), "PMR 0xff");

	printf("-- CLEAR\n");
	pmr(0x00);
	its_must(its_int(DEV_CPU, 1), "INT EventID 1 with PMR 0");
	its_must(its_clear(DEV_CPU, 1), "CLEAR EventID 1");
	pmr(0xff);
	expect_ack(INTID_SPURIOUS, "after CLEAR");

	printf("-- priorities (INV after each configuration change)\n");
	lpi_config(LPI(2), 0x40, 1);
	lpi_config(LPI(3), 0x20, 1);
	its_must(its_inv(DEV_CPU, 2), "INV EventID 2 (priority 0x40)");
	its_must(its_inv(DEV_CPU, 3), "INV EventID 3 (priority 0x20)");
	pmr(0x00);
	its_must(its_int(DEV_CPU, 2), "INT EventID 2");
	its_must(its_int(DEV_CPU, 0), "INT EventID 0");
	its_must(its_int(DEV_CPU, 3), "INT EventID 3");
	pmr(0xff);
	{
		u32 got = gic_poll_ack(2000000);
		u64 rpr = icc_read(ICC_RPR_EL1);
		check(got == LPI(3), "highest priority first: %u", got);
		check(rpr == 0x20, "ICC_RPR_EL1 while it is active: 0x%lx", rpr);
		gic_eoi(got);
		expect_ack(LPI(2), "then priority 0x40");
		expect_ack(LPI(0), "then priority 0x80");
	}
	pmr(0x30);
	its_must(its_int(DEV_CPU, 2), "INT EventID 2 with PMR 0x30");
	expect_ack(INTID_SPURIOUS, "priority 0x40 not above PMR 0x30");
	pmr(0x48);
	expect_ack(LPI(2), "PMR 0x48");
	pmr(0xff);

	printf("-- INV: disabled LPIs stay pending\n");
	lpi_config(LPI(0), 0x80, 0);
	its_must(its_inv(DEV_CPU, 0), "INV EventID 0 (disabled)");
	its_translate(0);
	expect_ack(INTID_SPURIOUS, "TRANSLATER EventID 0 while disabled");
	lpi_config(LPI(0), 0x80, 1);
	its_must(its_inv(DEV_CPU, 0), "INV EventID 0 (enabled)");
	expect_ack(LPI(0), "after enable + INV");

	printf("-- INVALL\n");
	lpi_config(LPI(1), 0x80, 0);
	its_must(its_invall(0), "INVALL ICID 0 (LPI 8193 disabled)");
	its_must(its_int(DEV_CPU, 1), "INT EventID 1");
	expect_ack(INTID_SPURIOUS, "while disabled");
	lpi_config(LPI(1), 0x80, 1);
	its_must(its_invall(0), "INVALL ICID 0 (LPI 8193 enabled)");
	expect_ack(LPI(1), "after enable + INVALL");

	printf("-- MOVI, MOVALL (one CPU: same redistributor)\n");
	its_must(its_mapc(1, rd0, 1), "MAPC ICID 1 -> cpu0");
	its_must(its_movi(DEV_CPU, 0, 1), "MOVI EventID 0 -> ICID 1");
	its_translate(0);
	expect_ack(LPI(0), "TRANSLATER EventID 0 via ICID 1");
	pmr(0x00);
	its_must(its_int(DEV_CPU, 0), "INT EventID 0");
	its_must(its_movall(rd0, rd0), "MOVALL cpu0 -> cpu0");
	pmr(0xff);
	expect_ack(LPI(0), "still pending after MOVALL to itself");

	printf("-- DISCARD\n");
	pmr(0x00);
	its_must(its_int(DEV_CPU, 1), "INT EventID 1");
	its_must(its_discard(DEV_CPU, 1), "DISCARD EventID 1");
	pmr(0xff);
	expect_ack(INTID_SPURIOUS, "pending state removed by DISCARD");
	its_translate(1);
	expect_ack(INTID_SPURIOUS, "TRANSLATER EventID 1 after DISCARD");
	its_must(its_mapti(DEV_CPU, 1, LPI(4), 0), "MAPTI EventID 1 -> LPI 8196 ICID 0");
	its_translate(1);
	expect_ack(LPI(4), "TRANSLATER EventID 1 remapped");

	printf("-- MAPC V=0, MAPD V=0\n");
	its_must(its_mapc(1, rd0, 0), "MAPC ICID 1 V=0");
	its_translate(0);
	expect_ack(INTID_SPURIOUS, "TRANSLATER EventID 0 (ICID 1 unmapped)");
	its_must(its_mapc(1, rd0, 1), "MAPC ICID 1 -> cpu0 again");
	its_translate(0);
	expect_ack(LPI(0), "TRANSLATER EventID 0");
	its_must(its_mapd(DEV_CPU, 0, 0, 0), "MAPD DeviceID 0 V=0");
	its_translate(0);
	expect_ack(INTID_SPURIOUS, "TRANSLATER EventID 0 (device unmapped)");
	its_must(its_mapd_alloc(DEV_CPU, 4), "MAPD DeviceID 0 with a new ITT");
	its_must(its_mapti(DEV_CPU, 0, LPI(5), 1), "MAPTI EventID 0 -> LPI 8197 ICID 1");
	its_translate(0);
	expect_ack(LPI(5), "TRANSLATER EventID 0 (new ITT)");

	u64 c = its_creadr();
	check(!(c & 1), "GITS_CREADR.Stalled clear");
	pass();
	return 0;
}
