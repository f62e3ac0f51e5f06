/* its_irq_smp: IRQ-driven LPI delivery on four CPUs, then MOVI and MOVALL of LPIs that are
 * pending (kept from delivery by being disabled in the configuration table) between CPUs. */
#include "rt.h"

#define NCPU 4
#define DEV 0 /* CPU stores to GITS_TRANSLATER carry DeviceID 0 on QEMU virt */
#define LPI(ev) (LPI_BASE + (ev))

void secondary_main(u64 ctx)
{
	secondary_idle((int)ctx);
}

static void settle(void)
{
	for (volatile u32 i = 0; i < 200000; i++)
		;
	dmb(sy);
}

static u32 counts[NCPU];
static void snapshot(void)
{
	dmb(sy);
	for (int c = 0; c < NCPU; c++)
		counts[c] = irq_logs[c].n;
}

/* print what each CPU received since the last snapshot */
static void show_new(const char *what)
{
	dmb(sy);
	printf("%s:", what);
	for (int c = 0; c < NCPU; c++) {
		printf(" cpu%d[", c);
		for (u32 k = counts[c]; k < irq_logs[c].n && k < LOG_MAX; k++)
			printf(k == counts[c] ? "%u" : " %u", irq_logs[c].ids[k]);
		printf("]");
	}
	printf("\n");
}

static int got_new(int cpu, const u32 *ids, u32 n)
{
	if (irq_logs[cpu].n - counts[cpu] != n)
		return 0;
	for (u32 k = 0; k < n; k++)
		if (irq_logs[cpu].ids[counts[cpu] + k] != ids[k])
			return 0;
	return 1;
}

static u32 total_new(void)
{
	u32 t = 0;
	for (int c = 0; c < NCPU; c++)
		t += irq_logs[c].n - counts[c];
	return t;
}

int main(void)
{
	printf("its_irq_smp: IRQ delivery on %d CPUs, MOVI and MOVALL of pending LPIs\n", NCPU);
	gic_lpi_bringup(NCPU, 14);
	if (its_init(0, 0x1000))
		fail("ITS init");
	int up = smp_start(NCPU);
	printf("CPUs running: %d\n", up);
	if (up != NCPU)
		fail("need %d CPUs (run with -smp %d)", NCPU, NCPU);
	irq_enable();

	for (int c = 0; c < NCPU; c++)
		its_must(its_mapc((u32)c, its_rdbase(c), 1), "MAPC ICID %d -> cpu%d", c, c);
	its_must(its_mapd_alloc(DEV, 4), "MAPD DeviceID 0, 16 events");
	for (u32 ev = 0; ev < 8; ev++) {
		lpi_config(LPI(ev), 0xa0, 1);
		its_must(its_mapti(DEV, ev, LPI(ev), ev % NCPU), "MAPTI EventID %u -> LPI %u ICID %u", ev, LPI(ev), ev % NCPU);
	}

	printf("-- 1. eight MSIs back to back, one collection per CPU\n");
	snapshot();
	for (u32 ev = 0; ev < 8; ev++)
		its_translate(ev);
	for (int c = 0; c < NCPU; c++)
		irq_log_wait(c, counts[c] + 2, 20000000);
	settle();
	show_new("received");
	for (int c = 0; c < NCPU; c++) {
		u32 want[2] = {LPI((u32)c), LPI((u32)c + 4)};
		check(got_new(c, want, 2), "cpu%d got LPIs %u and %u", c, want[0], want[1]);
	}

	printf("-- 2. MOVI of a pending LPI: cpu1 -> cpu2\n");
	lpi_config(LPI(8), 0x90, 0);
	its_must(its_mapti(DEV, 8, LPI(8), 1), "MAPTI EventID 8 -> LPI 8200 ICID 1 (disabled)");
	snapshot();
	its_translate(8);
	settle();
	check(total_new() == 0, "LPI 8200 pending on cpu1, not delivered while disabled");
	its_must(its_movi(DEV, 8, 2), "MOVI EventID 8 -> ICID 2");
	its_must(its_sync(its_rdbase(1)), "SYNC cpu1");
	lpi_config(LPI(8), 0x90, 1);
	its_must(its_inv(DEV, 8), "INV EventID 8 (enabled)");
	irq_log_wait(2, counts[2] + 1, 20000000);
	settle();
	show_new("received");
	{
		u32 want[1] = {LPI(8)};
		check(got_new(2, want, 1) && total_new() == 1, "pending state moved: only cpu2 got LPI 8200");
	}

	printf("-- 3. MOVALL: LPIs pending on cpu1 move to cpu3\n");
	static const u8 prio[5] = {0x80, 0x60, 0x60, 0x40, 0x60};
	for (u32 i = 0; i < 5; i++) {
		u32 ev = 10 + i, icid = i < 4 ? 1 : 3;
		lpi_config(LPI(ev), prio[i], 0);
		its_must(its_mapti(DEV, ev, LPI(ev), icid), "MAPTI EventID %u -> LPI %u ICID %u (priority 0x%x, disabled)",
			 ev, LPI(ev), icid, prio[i]);
	}
	snapshot();
	for (u32 i = 0; i < 5; i++)
		its_must(its_int(DEV, 10 + i), "INT EventID %u", 10 + i);
	settle();
	check(total_new() == 0, "nothing delivered while disabled");
	its_must(its_mapc(1, its_rdbase(3), 1), "MAPC ICID 1 -> cpu3");
	its_must(its_movall(its_rdbase(1), its_rdbase(3)), "MOVALL cpu1 -> cpu3");
	its_must(its_sync(its_rdbase(3)), "SYNC cpu3");
	for (u32 i = 0; i < 5; i++)
		lpi_config(LPI(10 + i), prio[i], 1);
	its_must(its_invall(1), "INVALL ICID 1");
	its_must(its_invall(3), "INVALL ICID 3");
	irq_log_wait(3, counts[3] + 5, 20000000);
	settle();
	show_new("received");
	{
		u32 want[5] = {LPI(13), LPI(11), LPI(12), LPI(14), LPI(10)};
		check(got_new(3, want, 5) && total_new() == 5,
		      "cpu3 got all five, by priority then INTID: 8205 8203 8204 8206 8202");
	}

	printf("-- 4. ICID 1 back to cpu1\n");
	its_must(its_mapc(1, its_rdbase(1), 1), "MAPC ICID 1 -> cpu1");
	snapshot();
	its_translate(1);
	irq_log_wait(1, counts[1] + 1, 20000000);
	its_translate(10);
	irq_log_wait(1, counts[1] + 2, 20000000);
	settle();
	show_new("received");
	{
		u32 want[2] = {LPI(1), LPI(10)};
		check(got_new(1, want, 2) && total_new() == 2, "cpu1 got LPIs 8193 and 8202");
	}

	printf("-- totals\n");
	for (int c = 0; c < NCPU; c++)
		printf("cpu%d: %u LPIs\n", c, irq_logs[c].n);
	pass();
	return 0;
}
