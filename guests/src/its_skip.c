/* its_skip: commands the architecture calls errors, queued in one batch with good commands
 * around them, as guests written for KVM, QEMU, Xen and gem5 do. Those ITSes skip each bad
 * command and go on (allowed by IHI 0069 6.3 with GITS_TYPER.SEIS=0), so the whole batch
 * drains, the good commands after the bad ones take effect and their interrupts arrive.
 * An ITS that stalls instead (vgic's strict and gic-600 profiles) stops at each bad command:
 * the guest says where ("queue stalled at command N"), repairs the slot with SYNC, retries
 * with GITS_CWRITER.Retry and goes on, so the rest of the transcript is the same. */
#include "rt.h"

#define DEV 0 /* GITS_TRANSLATER stores from a CPU carry DeviceID 0 on QEMU and vgic */
#define D(dev) ((u64)(dev) << 32)

struct entry {
	const char *what;
	u64 dw[4];
};

int main(void)
{
	printf("its_skip: a batch of commands with errors among them, one GITS_CWRITER write\n");
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	gic_lpi_tables_alloc(14);
	for (u32 i = 0; i < 8; i++)
		lpi_config(LPI_BASE + i, 0xa0, 1);
	gic_lpi_pend_alloc(0);
	gic_lpi_enable(0);
	if (its_init(0, 0))
		fail("ITS init");
	u64 rd0 = its_rdbase(0);
	its_must(its_mapc(0, rd0, 1), "MAPC ICID 0 -> cpu0");
	its_must(its_mapc(1, rd0, 1), "MAPC ICID 1 -> cpu0");
	its_must(its_mapd_alloc(DEV, 2), "MAPD DeviceID 0, 4 events");
	its_must(its_mapti(DEV, 0, LPI_BASE + 0, 0), "MAPTI EventID 0 -> LPI 8192 ICID 0");
	its_must(its_mapti(DEV, 1, LPI_BASE + 1, 0), "MAPTI EventID 1 -> LPI 8193 ICID 0");

	u64 bad_rd = its.pta ? 0xfff0000UL : 99UL << 16;
	const struct entry batch[] = {
		{"DISCARD DeviceID 0 EventID 1", {0x0f | D(DEV), 1, 0, 0}},
		{"INT DeviceID 0 EventID 1, just discarded (error 0x010307)", {0x03 | D(DEV), 1, 0, 0}},
		{"MAPTI EventID 2 -> LPI 8194 ICID 0", {0x0a | D(DEV), 2 | (u64)(LPI_BASE + 2) << 32, 0, 0}},
		{"MAPTI EventID 9, beyond the 4 events MAPD gave (error 0x010A05)",
		 {0x0a | D(DEV), 9 | (u64)(LPI_BASE + 5) << 32, 0, 0}},
		{"MAPC ICID 1 -> an RDbase with no redistributor (error 0x010902)", {0x09, 0, BIT(63) | bad_rd | 1, 0}},
		{"undefined opcode 0x3f", {0x3f, 0, 0, 0}},
		{"MAPTI EventID 3 -> LPI 8195 ICID 1", {0x0a | D(DEV), 3 | (u64)(LPI_BASE + 3) << 32, 1, 0}},
		{"INT DeviceID 0 EventID 2", {0x03 | D(DEV), 2, 0, 0}},
		{"INT DeviceID 0 EventID 3", {0x03 | D(DEV), 3, 0, 0}},
		{"SYNC cpu0", {0x05, 0, rd0, 0}},
	};
	const u32 n = sizeof(batch) / sizeof(batch[0]);
	u32 first = its.wr;
	for (u32 i = 0; i < n; i++) {
		printf("  [%u] %s\n", i, batch[i].what);
		its_queue(batch[i].dw[0], batch[i].dw[1], batch[i].dw[2], batch[i].dw[3]);
	}
	dsb(sy);
	w64(its.base + GITS_CWRITER, its.wr);
	int stalls = 0;
	for (;;) {
		int st = its_wait(1000000);
		if (st == ITS_OK)
			break;
		if (st != ITS_STALLED || ++stalls > (int)n)
			fail("command queue %s", its_status(st));
		u32 at = (u32)(its_creadr() & 0xfffe0);
		u32 index = ((at - first) % its.cmdq_bytes) / 32;
		printf("queue stalled at command [%u]: %s\n", index, index < n ? batch[index].what : "?");
		volatile u64 *slot = (volatile u64 *)(its.cmdq + at);
		slot[0] = 0x05;
		slot[1] = 0;
		slot[2] = rd0;
		slot[3] = 0;
		dsb(sy);
		w64(its.base + GITS_CWRITER, its.wr | 1); /* Retry */
	}
	check(1, "the queue drained: GITS_CREADR == GITS_CWRITER");
	printf("[impl] stalls: %d\n", stalls);

	printf("-- what the good commands after the bad ones did\n");
	expect_ack(LPI_BASE + 2, "INT EventID 2 (mapped after the DISCARD and INT)");
	expect_ack(LPI_BASE + 3, "INT EventID 3 on ICID 1: the bad MAPC left ICID 1 on cpu0");
	expect_ack(INTID_SPURIOUS, "nothing else: EventID 1 stayed discarded");
	its_translate(0);
	expect_ack(LPI_BASE, "MSI EventID 0");
	its_translate(1);
	expect_ack(INTID_SPURIOUS, "MSI EventID 1 (discarded)");
	its_translate(2);
	expect_ack(LPI_BASE + 2, "MSI EventID 2");
	pass();
	return 0;
}
