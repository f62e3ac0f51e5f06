/* its_errors: ITS commands with bad arguments. After each one the guest prints
 * GITS_CREADR (Stalled bit, whether the queue moved past the command), recovers a stalled
 * queue (overwrite the command with SYNC, write CWRITER with Retry=1), and checks that a
 * later INT still runs. Whether an ITS stalls or skips an erroneous command is
 * IMPLEMENTATION DEFINED (QEMU skips parameter errors), so those lines are "[impl] ". */
#include "rt.h"

#define DEV 0
#define BAD_DEV 5
#define PROBE_LPI LPI_BASE

static u64 rd0;
static int stalls;

static void cmd(u64 dw0, u64 dw1, u64 dw2, u64 dw3)
{
	its_queue(dw0, dw1, dw2, dw3);
	int st = its_kick();
	u64 c = its_creadr();
	printf("[impl]   GITS_CREADR 0x%lx: Stalled %lu, %s\n", c, c & 1,
	       (c & 0xfffe0) == its.wr ? "queue moved past the command" : "queue stopped at the command");
	if (st == ITS_STALLED) {
		stalls++;
		u32 off = (u32)(c & 0xfffe0);
		volatile u64 *slot = (volatile u64 *)(its.cmdq + off);
		slot[0] = 0x05;
		slot[1] = 0;
		slot[2] = rd0;
		slot[3] = 0;
		dsb(sy);
		w64(its.base + GITS_CWRITER, its.wr | 1); /* Retry */
		st = its_wait(1000000);
		c = its_creadr();
		printf("[impl]   recovery: command replaced by SYNC, CWRITER.Retry=1 -> %s, GITS_CREADR 0x%lx\n",
		       its_status(st), c);
	}
	if (st != ITS_OK)
		fail("command queue %s", its_status(st));
}

static void probe(void)
{
	cmd(0x03 | ((u64)DEV << 32), 0, 0, 0); /* INT DeviceID 0 EventID 0 */
	expect_ack(PROBE_LPI, "  later INT DeviceID 0 EventID 0");
}

struct bad {
	const char *what;
	u64 dw[4];
};

#define D(dev) ((u64)(dev) << 32)

int main(void)
{
	printf("its_errors: commands with bad arguments, then a command that must still run\n");
	gic_dist_init();
	if (gic_cpu_init(0))
		fail("no redistributor for cpu0");
	gic_lpi_tables_alloc(14);
	for (u32 i = 0; i < 8; i++)
		lpi_config(LPI_BASE + i, 0xa0, 1);
	gic_lpi_pend_alloc(0);
	gic_lpi_enable(0);
	if (its_init(0, 0x1000))
		fail("ITS init");
	printf("[impl] GITS_TYPER 0x%lx (SEIS %lu), EventID bits %u\n", its.typer, (its.typer >> 18) & 1, its.idbits);
	rd0 = its_rdbase(0);
	its_must(its_mapc(0, rd0, 1), "MAPC ICID 0 -> cpu0");
	its_must(its_mapd_alloc(DEV, 3), "MAPD DeviceID 0, 8 events (one-page device and collection tables)");
	its_must(its_mapti(DEV, 0, PROBE_LPI, 0), "MAPTI EventID 0 -> LPI 8192 ICID 0");
	its_must(its_mapti(DEV, 1, PROBE_LPI + 1, 0), "MAPTI EventID 1 -> LPI 8193 ICID 0");
	probe();

	u32 big_size = its.idbits > 31 ? 31 : its.idbits;
	const struct bad bad[] = {
		{"MAPD DeviceID 0xffff beyond the device table (0x010801)", {0x08 | D(0xffff), 2, BIT(63) | (u64)alloc(256, 256), 0}},
		{"MAPD Size above GITS_TYPER.ID_bits (0x010802)", {0x08 | D(BAD_DEV), big_size, BIT(63) | (u64)alloc(256, 256), 0}},
		{"MAPC ICID 0xffff beyond the collection table (0x010903)", {0x09, 0, BIT(63) | rd0 | 0xffff, 0}},
		{"MAPC RDbase of a processor that does not exist (0x010902)", {0x09, 0, BIT(63) | (its.pta ? 0xfff0000UL : 99UL << 16) | 2, 0}},
		{"MAPTI unmapped device (0x010A04)", {0x0a | D(BAD_DEV), 0 | ((u64)(LPI_BASE + 2) << 32), 0, 0}},
		{"MAPTI EventID 8 beyond the 8-event ITT (0x010A05)", {0x0a | D(DEV), 8 | ((u64)(LPI_BASE + 2) << 32), 0, 0}},
		{"MAPTI pINTID 100, not an LPI (0x010A06)", {0x0a | D(DEV), 2 | (100UL << 32), 0, 0}},
		{"MAPI unmapped device (0x010B04)", {0x0b | D(BAD_DEV), 3, 0, 0}},
		{"INT unmapped device (0x010304)", {0x03 | D(BAD_DEV), 0, 0, 0}},
		{"INT EventID beyond the ITT (0x010305)", {0x03 | D(DEV), 8, 0, 0}},
		{"INT unmapped interrupt (0x010307)", {0x03 | D(DEV), 7, 0, 0}},
		{"CLEAR unmapped interrupt (0x010507)", {0x04 | D(DEV), 7, 0, 0}},
		{"INV unmapped interrupt (0x010C07)", {0x0c | D(DEV), 7, 0, 0}},
		{"DISCARD unmapped interrupt (0x010F07)", {0x0f | D(DEV), 7, 0, 0}},
		{"MOVI to an unmapped collection (0x010109)", {0x01 | D(DEV), 0, 9, 0}},
		{"MOVI unmapped interrupt (0x010107)", {0x01 | D(DEV), 7, 0, 0}},
		{"INVALL unmapped collection (0x010D09)", {0x0d, 0, 9, 0}},
		{"MOVALL to a processor that does not exist (0x010E01)", {0x0e, 0, rd0, its.pta ? 0xfff0000UL : 99UL << 16}},
		{"undefined opcode 0x3f (no architected code)", {0x3f, 0, 0, 0}},
	};
	for (u32 i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		printf("-- %s\n", bad[i].what);
		cmd(bad[i].dw[0], bad[i].dw[1], bad[i].dw[2], bad[i].dw[3]);
		probe();
	}

	printf("-- the bad MAPC and MOVI left the old mappings\n");
	its_translate(1);
	expect_ack(PROBE_LPI + 1, "  GITS_TRANSLATER EventID 1 (ICID 0 -> cpu0)");

	printf("-- MAPTI pINTID 20000: an LPI, but beyond GICR_PROPBASER.IDbits (14 bits)\n");
	cmd(0x0a | D(DEV), 6 | (20000UL << 32), 0, 0);
	cmd(0x03 | D(DEV), 6, 0, 0);
	expect_ack(INTID_SPURIOUS, "  INT EventID 6 (LPI 20000 outside the configuration table)");
	probe();

	printf("-- MAPTI for a device whose ITT is outside memory (external abort on the ITT write)\n");
	printf("MAPD DeviceID 6, ITT at 0x7f000000 (no memory there)\n");
	cmd(0x08 | D(BAD_DEV + 1), 2, BIT(63) | 0x7f000000UL, 0);
	cmd(0x0a | D(BAD_DEV + 1), 0 | ((u64)(LPI_BASE + 3) << 32), 0, 0);
	cmd(0x03 | D(DEV), 0, 0, 0);
	u32 got = gic_poll_ack(2000000);
	if (got != INTID_SPURIOUS)
		gic_eoi(got);
	printf("[impl]   later INT DeviceID 0 EventID 0: IAR1 %u\n", got);

	printf("[impl] stalls seen: %d\n", stalls);
	pass();
	return 0;
}
