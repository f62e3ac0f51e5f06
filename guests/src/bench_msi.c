/* bench_msi: the guest-visible cost of the LPI path, timed with the virtual counter.
 *
 * Built twice: bench_msi (LPI_BITS=16, GICR_PROPBASER.IDbits 15, what Linux uses) and
 * bench_msi_14 (LPI_BITS=14). One CPU, delivery polled with PSTATE.I set. Four loops:
 *   msi  store EventID to GITS_TRANSLATER, poll ICC_IAR1_EL1, write ICC_EOIR1_EL1
 *   int  INT command (queue + CWRITER + wait for CREADR), poll IAR1, EOIR1
 *   its  read of GITS_CTLR
 *   icc  read of ICC_RPR_EL1
 * Each prints "[impl] bench NAME idbits B iters N ticks T freq F" (raw CNTVCT ticks: the
 * host turns them into ns) and the transcript ends in PASS when every LPI came back right.
 * bench/run.py runs it under `vgic run` and under QEMU and parses these lines. */
#include "rt.h"

#ifndef LPI_BITS
#define LPI_BITS 16
#endif
#ifndef ITERS_MSI
#define ITERS_MSI 2000
#endif
#ifndef ITERS_INT
#define ITERS_INT 1000
#endif
#ifndef ITERS_READ
#define ITERS_READ 20000
#endif

#define DEV_CPU 0 /* the DeviceID of a plain CPU store to GITS_TRANSLATER */
#define DEV_B 1   /* driven with INT */
#define LPI_MSI (LPI_BASE + 0)
#define LPI_INT (LPI_BASE + 1)

static u64 cntvct(void)
{
	isb();
	return read_sysreg(cntvct_el0);
}

static u64 freq;
static int errors;

static void report(const char *name, u32 iters, u64 ticks)
{
	printf("[impl] bench %s idbits %u iters %u ticks %lu freq %lu\n", name, (u32)LPI_BITS, iters, ticks, freq);
}

static void ack_expect(u32 want)
{
	u32 got = gic_poll_ack(100000);
	if (got < 1020 || got >= 1024)
		gic_eoi(got);
	if (got != want)
		errors++;
}

static void bench_msi(u32 iters)
{
	for (u32 i = 0; i < 8; i++) { /* warm up */
		its_translate(0);
		ack_expect(LPI_MSI);
	}
	u64 t0 = cntvct();
	for (u32 i = 0; i < iters; i++) {
		its_translate(0);
		ack_expect(LPI_MSI);
	}
	report("msi", iters, cntvct() - t0);
}

static void bench_int(u32 iters)
{
	for (u32 i = 0; i < 8; i++) {
		its_int(DEV_B, 0);
		ack_expect(LPI_INT);
	}
	u64 t0 = cntvct();
	for (u32 i = 0; i < iters; i++) {
		if (its_int(DEV_B, 0) != ITS_OK)
			errors++;
		ack_expect(LPI_INT);
	}
	report("int", iters, cntvct() - t0);
}

static void bench_its_read(u32 iters)
{
	u32 acc = 0;
	u64 t0 = cntvct();
	for (u32 i = 0; i < iters; i++)
		acc += r32(its.base + GITS_CTLR) & 1; /* Enabled */
	report("its_read", iters, cntvct() - t0);
	if (acc != iters)
		errors++;
}

static void bench_icc_read(u32 iters)
{
	u64 acc = 0;
	u64 t0 = cntvct();
	for (u32 i = 0; i < iters; i++)
		acc += icc_read(ICC_RPR_EL1);
	report("icc_read", iters, cntvct() - t0);
	if (acc != (u64)iters * 0xff)
		errors++;
}

int main(void)
{
	printf("bench_msi: LPI path costs, %u LPI ID bits\n", (u32)LPI_BITS);
	freq = read_sysreg(cntfrq_el0);
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	gic_lpi_tables_alloc(LPI_BITS);
	lpi_config(LPI_MSI, 0x80, 1);
	lpi_config(LPI_INT, 0x80, 1);
	gic_lpi_pend_alloc(0);
	gic_lpi_enable(0);
	if (its_init(0, 0x1000))
		fail("ITS init");
	u64 rd0 = its_rdbase(0);
	its_must(its_mapc(0, rd0, 1), "MAPC ICID 0 -> cpu0");
	its_must(its_mapd_alloc(DEV_CPU, 4), "MAPD DeviceID %d", DEV_CPU);
	its_must(its_mapd_alloc(DEV_B, 4), "MAPD DeviceID %d", DEV_B);
	its_must(its_mapti(DEV_CPU, 0, LPI_MSI, 0), "MAPTI DeviceID %d EventID 0 -> LPI %u", DEV_CPU, LPI_MSI);
	its_must(its_mapti(DEV_B, 0, LPI_INT, 0), "MAPTI DeviceID %d EventID 0 -> LPI %u", DEV_B, LPI_INT);
	its_must(its_sync(rd0), "SYNC cpu0");

	bench_msi(ITERS_MSI);
	bench_int(ITERS_INT);
	bench_its_read(ITERS_READ);
	bench_icc_read(ITERS_READ);
	check(errors == 0, "every LPI acknowledged as expected");
	if (errors)
		fail("%d errors", errors);
	pass();
	return 0;
}
