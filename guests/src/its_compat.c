/* its_compat: what third-party guests written for KVM's and QEMU's virt machines assume.
 *
 * 1. Like a third-party vGIC test suite at start-up: every GITS_BASER<n> with a table type
 *    reads Page_Size = 64 KB at reset (KVM and QEMU reset it so), and the tables are then
 *    programmed with the page size read at reset.
 * 2. GITS_CTLR: Quiescent while disabled (architected), and, while enabled, Quiescent=1 with
 *    the command queue empty (UNKNOWN in the architecture; KVM, QEMU and Xen report 1).
 * 3. GITS_CTLR with a queue that is not empty: a command whose ITT write faults stalls the
 *    queue on QEMU and on vgic's qemu profile; the values read then are "[impl] " (QEMU keeps
 *    Quiescent=1 even then). The queue is repaired and an MSI still arrives.
 * Every "check" line must match QEMU; a profile that resets Page_Size to 4 KB (gic-600,
 * strict) or never reports Quiescent while enabled (strict) fails the matching checks. */
#include "rt.h"

#define DEV 0
#define CTLR_ENABLED BIT(0)
#define CTLR_QUIESCENT BIT(31)

static const char *type_name(u32 type)
{
	return type == 1 ? "Device" : type == 4 ? "Collection" : type == 2 ? "vPE" : "other";
}

static u32 page_bytes(u32 code)
{
	return code == 0 ? 0x1000 : code == 1 ? 0x4000 : 0x10000;
}

int main(void)
{
	printf("its_compat: GITS_BASER Page_Size at reset, GITS_CTLR.Quiescent\n");
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");

	printf("-- GITS_BASER<n> at reset\n");
	u32 dt_page = 0, ct_page = 0;
	for (int n = 0; n < 8; n++) {
		u64 v = r64(GITS_BASE + GITS_BASER(n));
		u32 type = (u32)(v >> 56) & 7;
		if (!type)
			continue;
		u32 code = (u32)(v >> 8) & 3;
		printf("[impl] GITS_BASER%d reset 0x%lx\n", n, v);
		check(code == 2, "GITS_BASER%d (%s table) Page_Size reads 64 KB at reset", n, type_name(type));
		check(!(v >> 63), "GITS_BASER%d is not Valid at reset", n);
		if (type == 1 && !dt_page)
			dt_page = page_bytes(code);
		if (type == 4 && !ct_page)
			ct_page = page_bytes(code);
	}
	if (!dt_page)
		fail("no device table");

	u32 ctlr = r32(GITS_BASE + GITS_CTLR);
	check(ctlr == CTLR_QUIESCENT, "GITS_CTLR reads Quiescent=1 Enabled=0 at reset");

	printf("-- tables programmed with the page size read at reset\n");
	gic_lpi_tables_alloc(14);
	for (u32 i = 0; i < 4; i++)
		lpi_config(LPI_BASE + i, 0xa0, 1);
	gic_lpi_pend_alloc(0);
	gic_lpi_enable(0);
	its_coll_page = ct_page ? ct_page : 0x1000;
	if (its_init(0, dt_page))
		fail("ITS init");
	check(its.dev.page == dt_page, "the device table kept the reset page size");
	if (its.coll.idx >= 0)
		check(its.coll.page == its_coll_page, "the collection table kept the reset page size");
	printf("[impl] device table 0x%lx, collection table 0x%lx\n", its.dev.baser, its.coll.baser);

	u64 rd0 = its_rdbase(0);
	its_must(its_mapc(0, rd0, 1), "MAPC ICID 0 -> cpu0");
	its_must(its_mapd_alloc(DEV, 2), "MAPD DeviceID 0, 4 events");
	its_must(its_mapti(DEV, 0, LPI_BASE, 0), "MAPTI EventID 0 -> LPI 8192");
	its_must(its_mapti(DEV, 1, LPI_BASE + 1, 0), "MAPTI EventID 1 -> LPI 8193");
	its_must(its_sync(rd0), "SYNC");

	printf("-- GITS_CTLR with the command queue empty\n");
	ctlr = r32(GITS_BASE + GITS_CTLR);
	printf("[impl] GITS_CTLR 0x%x\n", ctlr);
	check(ctlr & CTLR_ENABLED, "GITS_CTLR.Enabled=1");
	check((u64)(its_creadr() & 0xfffe0) == r64(GITS_BASE + GITS_CWRITER), "GITS_CREADR == GITS_CWRITER");
	check(ctlr & CTLR_QUIESCENT, "GITS_CTLR.Quiescent=1 while enabled with the queue empty");
	its_translate(0);
	expect_ack(LPI_BASE, "MSI EventID 0");

	printf("-- GITS_CTLR with a command the ITS cannot finish\n");
	printf("MAPD DeviceID 5, ITT at 0x7f000000 (no memory there), then MAPTI EventID 0\n");
	its_must(its_mapd(5, 0x7f000000UL, 1, 1), "MAPD DeviceID 5");
	its_queue(0x0a | (5UL << 32), (u64)(LPI_BASE + 2) << 32, 0, 0);
	int st = its_kick();
	ctlr = r32(GITS_BASE + GITS_CTLR);
	u64 c = its_creadr();
	printf("[impl]   %s; GITS_CREADR 0x%lx, GITS_CTLR 0x%x (Quiescent %u)\n",
	       st == ITS_STALLED ? "queue stalled" : st == ITS_OK ? "queue went on" : "queue still busy", c, ctlr,
	       ctlr >> 31);
	if (st == ITS_STALLED) {
		volatile u64 *slot = (volatile u64 *)(its.cmdq + (c & 0xfffe0));
		slot[0] = 0x05;
		slot[1] = 0;
		slot[2] = rd0;
		slot[3] = 0;
		dsb(sy);
		w64(GITS_BASE + GITS_CWRITER, its.wr | 1); /* Retry */
		st = its_wait(1000000);
		printf("[impl]   repaired with SYNC and Retry: %s, GITS_CTLR 0x%x\n", its_status(st),
		       r32(GITS_BASE + GITS_CTLR));
	}
	if (st != ITS_OK)
		fail("command queue %s", its_status(st));
	check((r32(GITS_BASE + GITS_CTLR) & (CTLR_QUIESCENT | CTLR_ENABLED)) == (CTLR_QUIESCENT | CTLR_ENABLED),
	      "GITS_CTLR.Quiescent=1 again once the queue is empty");
	its_translate(1);
	expect_ack(LPI_BASE + 1, "MSI EventID 1 after the repair");
	pass();
	return 0;
}
