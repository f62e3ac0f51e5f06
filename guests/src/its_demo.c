/* its_demo: driver bring-up, four CPUs started with PSCI CPU_ON, one collection per CPU,
 * two devices, MSIs by CPU stores to GITS_TRANSLATER and by the INT command, delivered as
 * IRQs on the targeted CPUs; CPU0 prints who got what once everyone is done. */
#include "rt.h"

#define NCPU 4
#define DEV_CPU 0    /* what a CPU store to GITS_TRANSLATER carries on QEMU virt */
#define DEV_NIC 0x21 /* a second device, driven through the INT command */
#define NIC_LPI 8300

struct msi {
	u32 dev, ev, lpi, icid;
};
static struct msi msis[12];
static int nmsi;

void secondary_main(u64 ctx)
{
	secondary_idle((int)ctx);
}

static void send(struct msi *m)
{
	u32 before = irq_logs[m->icid].n;
	if (m->dev == DEV_CPU)
		its_translate(m->ev);
	else if (its_int(m->dev, m->ev) != ITS_OK)
		fail("INT DeviceID 0x%x EventID %u", m->dev, m->ev);
	if (!irq_log_wait((int)m->icid, before + 1, 20000000))
		printf("no IRQ on cpu%u for LPI %u\n", m->icid, m->lpi);
}

int main(void)
{
	printf("its_demo: GICv3 ITS bring-up and MSIs on %d CPUs\n", NCPU);
	printf("[impl] DTB at 0x%lx\n", boot_dtb);
	gic_lpi_bringup(NCPU, 14);
	printf("[impl] GICD_TYPER 0x%x GICR_TYPER(cpu0) 0x%lx\n", r32(GICD_BASE + GICD_TYPER), gic_cpus[0].typer);

	int r = its_init(0, 0x1000);
	printf("[impl] GITS_TYPER 0x%lx, ITT entry %u bytes\n", its.typer, its.ite_size);
	if (r)
		fail("ITS init %d", r);
	printf("ITS: command queue, device table (BASER%d), collection table (BASER%d), enabled\n",
	       its.dev.idx, its.coll.idx);

	int up = smp_start(NCPU);
	printf("CPUs running: %d\n", up);
	if (up != NCPU)
		fail("need %d CPUs (run with -smp %d)", NCPU, NCPU);
	for (int c = 0; c < NCPU; c++)
		if (!gic_cpus[c].rd)
			fail("cpu%d has no redistributor", c);
	irq_enable();

	for (int c = 0; c < NCPU; c++) {
		printf("[impl] cpu%d: MPIDR affinity 0x%lx, RD_base 0x%lx, RDbase field 0x%lx\n", c,
		       cpu_mpidr(c), gic_cpus[c].rd, its_rdbase(c));
		its_must(its_mapc((u32)c, its_rdbase(c), 1), "MAPC ICID %d -> cpu%d", c, c);
	}
	its_must(its_mapd_alloc(DEV_CPU, 3), "MAPD DeviceID 0x%x, 8 events", DEV_CPU);
	its_must(its_mapd_alloc(DEV_NIC, 2), "MAPD DeviceID 0x%x, 4 events", DEV_NIC);
	for (u32 ev = 0; ev < 8; ev++)
		msis[nmsi++] = (struct msi){DEV_CPU, ev, LPI_BASE + ev, ev % NCPU};
	for (u32 ev = 0; ev < 4; ev++)
		msis[nmsi++] = (struct msi){DEV_NIC, ev, NIC_LPI + ev, 3 - ev};
	for (int i = 0; i < nmsi; i++) {
		struct msi *m = &msis[i];
		lpi_config(m->lpi, 0xa0, 1);
		its_must(its_mapti(m->dev, m->ev, m->lpi, m->icid), "MAPTI DeviceID 0x%x EventID %u -> LPI %u, ICID %u",
			 m->dev, m->ev, m->lpi, m->icid);
	}
	for (int c = 0; c < NCPU; c++)
		its_must(its_sync(its_rdbase(c)), "SYNC cpu%d", c);

	printf("-- MSIs: DeviceID 0x%x by stores to GITS_TRANSLATER, DeviceID 0x%x by INT\n", DEV_CPU, DEV_NIC);
	for (int i = 0; i < nmsi; i++)
		send(&msis[i]);

	printf("-- retarget: MOVI DeviceID 0 EventID 0 -> ICID 2, then store EventID 0 again\n");
	its_must(its_movi(DEV_CPU, 0, 2), "MOVI EventID 0 -> ICID 2");
	struct msi moved = {DEV_CPU, 0, LPI_BASE, 2};
	send(&moved);

	/* every CPU is idle again: report from CPU0 only */
	dmb(sy);
	printf("-- report: LPIs received, in order, per CPU\n");
	u32 expect[NCPU][8];
	u32 nexp[NCPU] = {0};
	for (int i = 0; i < nmsi; i++)
		expect[msis[i].icid][nexp[msis[i].icid]++] = msis[i].lpi;
	expect[2][nexp[2]++] = LPI_BASE;
	for (int c = 0; c < NCPU; c++) {
		struct irq_log *l = &irq_logs[c];
		irq_log_print(c);
		int same = l->n == nexp[c];
		for (u32 k = 0; same && k < nexp[c]; k++)
			same = l->ids[k] == expect[c][k];
		check(same, "cpu%d got exactly its %u LPIs in order", c, nexp[c]);
	}
	for (int i = 0; i < nmsi; i++) {
		struct msi *m = &msis[i];
		printf("DeviceID 0x%02x EventID %u -> LPI %u -> ICID %u -> cpu%u\n", m->dev, m->ev, m->lpi, m->icid, m->icid);
	}
	pass();
	return 0;
}
