/* timer_irq: the EL1 virtual timer (PPI 27) on every CPU through its redistributor's SGI
 * frame, then SGIs from CPU0 with ICC_SGI1R_EL1 (a target list, then IRM=1 "all but self",
 * then one to itself). CPU0 prints what each CPU received once all are done. */
#include "rt.h"

#define NCPU 4
#define PPI_VTIMER 27
#define TICKS 3

static volatile u32 ticks[MAX_CPUS], late_ok[MAX_CPUS], istatus_ok[MAX_CPUS], done[MAX_CPUS];

static void hook(int cpu, u32 id)
{
	if (id == PPI_VTIMER) {
		u64 ctl = read_sysreg(cntv_ctl_el0);
		u64 now = read_sysreg(cntvct_el0), cval = read_sysreg(cntv_cval_el0);
		if (ctl & 4)
			istatus_ok[cpu]++;
		if (now >= cval)
			late_ok[cpu]++;
		write_sysreg(cntv_ctl_el0, 0); /* timer off: the level-sensitive PPI goes low */
		isb();
		ticks[cpu]++;
	}
	irq_log_record(cpu, id);
}

static void setup_cpu(int cpu)
{
	gic_ppi_sgi_config(cpu, PPI_VTIMER, 0x80, 1);
	for (u32 sgi = 5; sgi <= 7; sgi++)
		gic_ppi_sgi_config(cpu, sgi, 0x60, 1);
}

static void run_ticks(int cpu, int sleep)
{
	u64 step = read_sysreg(cntfrq_el0) / 1000; /* 1 ms */
	for (u32 k = 0; k < TICKS; k++) {
		write_sysreg(cntv_tval_el0, step);
		write_sysreg(cntv_ctl_el0, 1);
		isb();
		for (u32 i = 0; i < 100000000 && ticks[cpu] <= k; i++) {
			if (sleep)
				wfi();
			else
				cpu_relax();
		}
	}
	dsb(sy);
	done[cpu] = 1;
	dsb(sy);
}

void secondary_main(u64 ctx)
{
	int cpu = (int)ctx;
	int ok = gic_cpu_init(cpu) == 0;
	if (ok) {
		setup_cpu(cpu);
		irq_enable();
	}
	smp_ready(cpu);
	if (ok)
		run_ticks(cpu, 1);
	for (;;)
		wfi();
}

static int wait_done(int cpu)
{
	for (u32 i = 0; i < 200000000; i++) {
		dmb(sy);
		if (done[cpu])
			return 1;
		cpu_relax();
	}
	return 0;
}

int main(void)
{
	printf("timer_irq: virtual timer PPI 27 on %d CPUs, SGIs from cpu0\n", NCPU);
	printf("[impl] CNTFRQ_EL0 %lu Hz\n", read_sysreg(cntfrq_el0));
	irq_hook = hook;
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	setup_cpu(0);
	{
		u64 sgi = gic_cpus[0].rd + GICR_SGI_OFF;
		check(r32(sgi + GICR_ISENABLER0) & (1U << PPI_VTIMER), "GICR_ISENABLER0 has PPI 27 enabled");
		check(((r32(sgi + GICR_IPRIORITYR + 24) >> 24) & 0xff) == 0x80, "GICR_IPRIORITYR27 reads 0x80");
	}
	irq_enable();
	int up = smp_start(NCPU);
	printf("CPUs running: %d\n", up);
	if (up != NCPU)
		fail("need %d CPUs (run with -smp %d)", NCPU, NCPU);
	run_ticks(0, 0);
	for (int c = 0; c < NCPU; c++)
		if (!wait_done(c))
			printf("cpu%d: timer did not finish\n", c);

	/* SGI 5 to cpu1..3 by target list, SGI 6 to all but self (IRM=1), SGI 7 to cpu0 */
	u32 base[NCPU];
	for (int c = 0; c < NCPU; c++)
		base[c] = irq_logs[c].n;
	gic_send_sgi1(5, 0, 0xe);
	for (int c = 1; c < NCPU; c++)
		irq_log_wait(c, base[c] + 1, 20000000);
	icc_write(ICC_SGI1R_EL1, (6UL << 24) | BIT(40));
	isb();
	for (int c = 1; c < NCPU; c++)
		irq_log_wait(c, base[c] + 2, 20000000);
	gic_send_sgi1(7, 0, 0x1);
	irq_log_wait(0, base[0] + 1, 20000000);
	for (volatile u32 i = 0; i < 200000; i++)
		;

	dmb(sy);
	printf("-- report (INTIDs acknowledged, in order)\n");
	for (int c = 0; c < NCPU; c++) {
		struct irq_log *l = &irq_logs[c];
		irq_log_print(c);
		check(ticks[c] == TICKS && late_ok[c] == TICKS && istatus_ok[c] == TICKS,
		      "cpu%d: %d timer interrupts, each with CNTVCT >= CVAL and ISTATUS set", c, TICKS);
		u32 want[6] = {27, 27, 27, 5, 6, 0}, n = 5;
		if (c == 0) {
			want[3] = 7;
			n = 4;
		}
		int same = l->n == n;
		for (u32 k = 0; same && k < n; k++)
			same = l->ids[k] == want[k];
		check(same, c ? "cpu%d: 27 27 27 5 6" : "cpu%d: 27 27 27 7", c);
	}
	pass();
	return 0;
}
