/* its_migrate: LPIs left pending on two CPUs across a pause for serial input.
 * The guest maps LPIs on 2 CPUs, makes some pending while their CPUs mask them (PMR 0),
 * parks a command in the queue while the ITS is stalled on a bad command, then waits for
 * a byte on the UART. `vgic run --migrate-on input` snapshots the machine there, tears it
 * down and restores it into a new one; the guest then fixes the queue, unmasks, and checks
 * that every pending LPI arrives exactly once on the CPU it targets. */
#include "rt.h"

#define NCPU 2
#define DEV 7
#define LPI(ev) (LPI_BASE + 64 + (ev))

static volatile u32 pmr_open[NCPU];

void secondary_main(u64 ctx)
{
	int cpu = (int)ctx;
	if (gic_cpu_init(cpu))
		fail("no redistributor for cpu%d", cpu);
	gic_lpi_enable(cpu);
	icc_write(ICC_PMR_EL1, 0); /* masked until cpu0 says so */
	irq_enable();
	smp_ready(cpu);
	while (!pmr_open[cpu])
		cpu_relax();
	icc_write(ICC_PMR_EL1, 0xff);
	for (;;)
		wfi();
}

int main(void)
{
	printf("its_migrate: pending LPIs and a stalled queue across a pause for input\n");
	gic_lpi_bringup(NCPU, 14);
	if (its_init(0, 0x1000))
		fail("ITS init");
	if (smp_start(NCPU) != NCPU)
		fail("need %d CPUs (run with -smp %d)", NCPU, NCPU);
	icc_write(ICC_PMR_EL1, 0);
	irq_enable();
	for (int c = 0; c < NCPU; c++)
		its_must(its_mapc((u32)c, its_rdbase(c), 1), "MAPC ICID %d -> cpu%d", c, c);
	its_must(its_mapd_alloc(DEV, 4), "MAPD DeviceID 7, 16 events");
	for (u32 ev = 0; ev < 6; ev++) {
		lpi_config(LPI(ev), (u8)(0x80 - 0x10 * (ev / 2)), 1);
		its_must(its_mapti(DEV, ev, LPI(ev), ev % NCPU), "MAPTI EventID %u -> LPI %u ICID %u", ev, LPI(ev), ev % NCPU);
	}
	for (u32 ev = 0; ev < 6; ev++)
		its_must(its_int(DEV, ev), "INT EventID %u (masked by PMR)", ev);
	/* a command that fails, then one queued behind it */
	its_queue(0x0a | ((u64)99 << 32), 0 | ((u64)LPI(9) << 32), 0, 0); /* MAPTI on unmapped DeviceID 99 */
	its_queue(0x03 | ((u64)DEV << 32), 5, 0, 0);                        /* INT EventID 5 again */
	int st = its_kick();
	printf("[impl] queue after the bad MAPTI: %s, GITS_CREADR 0x%lx\n", st == ITS_STALLED ? "stalled" : "went on",
	       its_creadr());
	printf("waiting for input\n");
	int c = uart_getc(0xffffffff);
	printf("got input 0x%x, going on\n", c);
	if (st == ITS_STALLED) {
		/* overwrite the bad command with SYNC and retry */
		u64 at = its.cmdq + (its_creadr() & ~1UL & 0xfffe0);
		w64(at, 0x05); w64(at + 8, 0); w64(at + 16, its_rdbase(0)); w64(at + 24, 0);
		dsb(sy);
		w64(its.base + GITS_CWRITER, its.wr | 1);
		its_wait(10000000);
	}
	check(!(its_creadr() & 1), "queue not stalled");
	pmr_open[1] = 1;
	dsb(sy);
	icc_write(ICC_PMR_EL1, 0xff);
	isb();
	irq_log_wait(0, 3, 20000000);
	irq_log_wait(1, 3, 20000000);
	for (u32 k = 0; k < 2000000; k++)
		cpu_relax();
	for (int cpu = 0; cpu < NCPU; cpu++)
		irq_log_print(cpu);
	check(irq_logs[0].n == 3 && irq_logs[0].ids[0] == LPI(4) && irq_logs[0].ids[1] == LPI(2) &&
	      irq_logs[0].ids[2] == LPI(0), "cpu0 got LPIs %u %u %u once each, by priority", LPI(4), LPI(2), LPI(0));
	check(irq_logs[1].n == 3 && irq_logs[1].ids[0] == LPI(5) && irq_logs[1].ids[1] == LPI(3) &&
	      irq_logs[1].ids[2] == LPI(1), "cpu1 got LPIs %u %u %u once each, by priority", LPI(5), LPI(3), LPI(1));
	pass();
	return 0;
}
