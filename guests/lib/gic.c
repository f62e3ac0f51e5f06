/* GICv3 distributor, redistributors (RD and SGI frames), LPI tables, CPU interface. */
#include "rt.h"

struct gic_cpu gic_cpus[MAX_CPUS];
u8 *lpi_prop;
u32 lpi_idbits;
void (*volatile irq_hook)(int cpu, u32 intid);
struct irq_log irq_logs[MAX_CPUS];

#define GICD_CTLR_RWP BIT(31)
#define GICD_CTLR_ARE BIT(4)
#define GICD_CTLR_G1 BIT(1)
#define GICD_CTLR_G0 BIT(0)
#define WAKER_PS BIT(1)
#define WAKER_CA BIT(2)

static void gicd_wait_rwp(void)
{
	for (u32 i = 0; i < 1000000 && (r32(GICD_BASE + GICD_CTLR) & GICD_CTLR_RWP); i++)
		cpu_relax();
}

void gic_dist_init(void)
{
	/* QEMU virt runs with GICD_CTLR.DS=1: one ARE bit, EnableGrp0/EnableGrp1 */
	w32(GICD_BASE + GICD_CTLR, GICD_CTLR_ARE);
	gicd_wait_rwp();
	w32(GICD_BASE + GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_G1 | GICD_CTLR_G0);
	gicd_wait_rwp();
}

static u64 mpidr_aff(u64 mpidr)
{
	return (mpidr & 0xffffffUL) | ((mpidr >> 8) & 0xff000000UL);
}

u64 gic_find_redist(u64 mpidr)
{
	u64 want = mpidr_aff(mpidr);
	u64 rd = GICR_BASE;
	for (int i = 0; i < 64; i++) {
		u64 typer = r64(rd + GICR_TYPER);
		if ((typer >> 32) == want)
			return rd;
		if (typer & BIT(4)) /* Last */
			break;
		rd += (typer & BIT(1)) ? 0x40000 : GICR_STRIDE; /* VLPIS: four frames */
	}
	return 0;
}

int gic_cpu_init(int cpu)
{
	u64 rd = gic_find_redist(read_sysreg(mpidr_el1));
	if (!rd)
		return -1;
	struct gic_cpu *c = &gic_cpus[cpu];
	c->rd = rd;
	c->typer = r64(rd + GICR_TYPER);
	c->procnum = (u32)((c->typer >> 8) & 0xffff);

	w32(rd + GICR_WAKER, r32(rd + GICR_WAKER) & ~WAKER_PS);
	for (u32 i = 0; i < 1000000 && (r32(rd + GICR_WAKER) & WAKER_CA); i++)
		cpu_relax();
	if (r32(rd + GICR_WAKER) & WAKER_CA)
		return -2;

	/* SGIs and PPIs are Group 1 */
	w32(rd + GICR_SGI_OFF + GICR_IGROUPR0, 0xffffffff);

	icc_write(ICC_SRE_EL1, icc_read(ICC_SRE_EL1) | 1);
	isb();
	icc_write(ICC_PMR_EL1, 0xff);
	icc_write(ICC_BPR1_EL1, 0);
	icc_write(ICC_CTLR_EL1, 0); /* EOImode 0: EOIR drops priority and deactivates */
	icc_write(ICC_IGRPEN1_EL1, 1);
	isb();
	return 0;
}

void gic_lpi_tables_alloc(u32 idbits)
{
	lpi_idbits = idbits;
	u64 n = (1UL << idbits) - LPI_BASE;
	lpi_prop = alloc(n, 0x1000);
	for (u64 i = 0; i < n; i++)
		lpi_prop[i] = 0xa0 | 0x2; /* priority 0xa0, RES1, disabled */
	dsb(sy);
}

void gic_lpi_pend_alloc(int cpu)
{
	gic_cpus[cpu].pend = (u64)alloc((1UL << lpi_idbits) / 8, 0x10000);
}

void gic_lpi_enable(int cpu)
{
	struct gic_cpu *c = &gic_cpus[cpu];
	u64 attrs = (7UL << 7) | (1UL << 10); /* RaWaWb, Inner Shareable */
	w64(c->rd + GICR_PROPBASER, (u64)lpi_prop | attrs | (lpi_idbits - 1));
	w64(c->rd + GICR_PENDBASER, c->pend | attrs);
	dsb(sy);
	w32(c->rd + GICR_CTLR, r32(c->rd + GICR_CTLR) | 1);
	dsb(sy);
	isb();
}

void lpi_config(u32 intid, u8 prio, int enable)
{
	lpi_prop[intid - LPI_BASE] = (u8)((prio & 0xfc) | 0x2 | (enable ? 1 : 0));
	dsb(sy);
}

u32 gic_poll_ack(u32 loops)
{
	for (u32 i = 0; i < loops; i++) {
		u32 id = gic_ack();
		if (id < 1020 || id >= 1024)
			return id;
		cpu_relax();
	}
	return INTID_SPURIOUS;
}

void gic_ppi_sgi_config(int cpu, u32 intid, u8 prio, int enable)
{
	u64 sgi = gic_cpus[cpu].rd + GICR_SGI_OFF;
	u64 pr = sgi + GICR_IPRIORITYR + (intid & ~3U);
	u32 sh = (intid & 3) * 8;
	w32(pr, (r32(pr) & ~(0xffU << sh)) | ((u32)prio << sh));
	w32(sgi + GICR_IGROUPR0, r32(sgi + GICR_IGROUPR0) | (1U << intid));
	if (enable)
		w32(sgi + GICR_ISENABLER0, 1U << intid);
	else
		w32(sgi + GICR_ICENABLER0, 1U << intid);
	dsb(sy);
}

void gic_send_sgi1(u32 intid, u32 aff1, u16 targetlist)
{
	dsb(sy);
	icc_write(ICC_SGI1R_EL1, ((u64)(intid & 0xf) << 24) | ((u64)(aff1 & 0xff) << 16) | targetlist);
	isb();
}

void irq_log_print(int cpu)
{
	struct irq_log *l = &irq_logs[cpu];
	printf("cpu%d:", cpu);
	for (u32 k = 0; k < l->n && k < LOG_MAX; k++)
		printf(" %u", l->ids[k]);
	printf("\n");
}

void irq_log_record(int cpu, u32 intid)
{
	struct irq_log *l = &irq_logs[cpu];
	u32 n = l->n;
	if (n < LOG_MAX)
		l->ids[n] = intid;
	dmb(sy);
	l->n = n + 1;
	dsb(sy);
}

int irq_log_wait(int cpu, u32 count, u32 loops)
{
	for (u32 i = 0; i < loops; i++) {
		dmb(sy);
		if (irq_logs[cpu].n >= count)
			return 1;
		cpu_relax();
	}
	return 0;
}

/* called from the IRQ vector (VBAR_EL1 + 0x280) */
void irq_handler_c(void)
{
	int cpu = cpu_index();
	for (int i = 0; i < 32; i++) {
		u32 id = gic_ack();
		if (id >= 1020 && id < 1024)
			break;
		void (*h)(int, u32) = irq_hook;
		if (h)
			h(cpu, id);
		else
			irq_log_record(cpu, id);
		gic_eoi(id);
	}
}

/* poll-acknowledge one interrupt (interrupts masked), EOI it, and check it is `want`
 * (INTID_SPURIOUS: expect nothing deliverable) */
u32 expect_ack(u32 want, const char *fmt, ...)
{
	va_list ap;
	u32 got = gic_poll_ack(want == INTID_SPURIOUS ? 2000 : 2000000);
	if (got < 1020 || got >= 1024)
		gic_eoi(got);
	uart_puts(got == want ? "check ok: " : "check FAILED: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	if (want == INTID_SPURIOUS)
		printf(" -> %s", got == want ? "nothing" : "unexpected");
	else
		printf(" -> %s", got == want ? "delivered" : "missing");
	printf(" (IAR1 %u, want %u)\n", got, want);
	if (got != want)
		fail_count++;
	return got;
}

void gic_lpi_bringup(int ncpu, u32 idbits)
{
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	gic_lpi_tables_alloc(idbits);
	for (int c = 0; c < ncpu; c++)
		gic_lpi_pend_alloc(c);
	gic_lpi_enable(0);
}

void secondary_idle(int cpu)
{
	if (gic_cpu_init(cpu) == 0) {
		gic_lpi_enable(cpu);
		irq_enable();
	}
	smp_ready(cpu);
	for (;;)
		wfi();
}
