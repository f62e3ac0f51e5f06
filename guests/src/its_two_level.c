/* its_two_level: a two-level (Indirect) device table. Level-1 entries point at level-2
 * pages that software allocates only for the DeviceIDs it uses; MAPD/MAPTI then work for
 * DeviceIDs spread over the whole 16-bit space. */
#include "rt.h"

static const u32 devs[] = {0x0000, 0x0001, 0x01ff, 0x0200, 0x1234, 0x8000, 0xffff};
#define NDEV (sizeof(devs) / sizeof(devs[0]))

int main(void)
{
	printf("its_two_level: two-level device table, DeviceIDs across 16 bits\n");
	gic_lpi_bringup(1, 14);
	int r = its_init(1, 0x1000);
	if (r)
		fail("ITS init %d", r);
	struct its_table *t = &its.dev;
	printf("[impl] GITS_TYPER 0x%lx: DeviceID bits %u\n", its.typer, its.devbits);
	printf("[impl] device table BASER%d 0x%lx: Indirect %s, page %u, entry %u bytes, %u level-1 page(s)\n",
	       t->idx, t->baser, t->indirect ? "sticks" : "RAZ/WI (flat table instead)", t->page, t->esz, t->pages);
	check(its.devbits >= 16, "GITS_TYPER.Devbits covers 16-bit DeviceIDs");
	check(((t->baser >> 62) & 1) == (u64)t->indirect, "BASER Indirect bit reads back as programmed");
	check((t->baser & 0xff) == t->pages - 1 && (t->baser & 0xfffffffff000UL) == t->base,
	      "BASER address and Size read back");

	its_must(its_mapc(0, its_rdbase(0), 1), "MAPC ICID 0 -> cpu0");
	for (u32 i = 0; i < NDEV; i++) {
		u32 d = devs[i];
		if (its_device_ensure(d))
			fail("DeviceID 0x%x outside the device table", d);
		if (t->indirect) {
			u64 per = t->page / t->esz;
			printf("[impl] DeviceID 0x%04x: level-1 index %lu, level-2 index %lu\n", d, d / per, d % per);
		}
		its_must(its_mapd_alloc(d, 2), "MAPD DeviceID 0x%04x", d);
		u32 lpi = LPI_BASE + 16 * i;
		lpi_config(lpi, 0xa0, 1);
		lpi_config(lpi + 3, 0xa0, 1);
		its_must(its_mapti(d, 0, lpi, 0), "MAPTI DeviceID 0x%04x EventID 0 -> LPI %u", d, lpi);
		its_must(its_mapti(d, 3, lpi + 3, 0), "MAPTI DeviceID 0x%04x EventID 3 -> LPI %u", d, lpi + 3);
	}
	if (t->indirect) {
		volatile u64 *l1 = (volatile u64 *)t->base;
		u32 valid = 0, total = t->pages * t->page / 8;
		for (u32 k = 0; k < total; k++)
			valid += (l1[k] >> 63) & 1;
		printf("[impl] %u of %u level-1 entries valid\n", valid, total);
	}

	printf("-- MSIs (DeviceID 0 by GITS_TRANSLATER stores, the others by INT)\n");
	its_translate(0);
	expect_ack(LPI_BASE, "GITS_TRANSLATER EventID 0 (DeviceID 0x0000)");
	its_translate(3);
	expect_ack(LPI_BASE + 3, "GITS_TRANSLATER EventID 3 (DeviceID 0x0000)");
	for (u32 i = 1; i < NDEV; i++) {
		u32 lpi = LPI_BASE + 16 * i;
		its_must(its_int(devs[i], 3), "INT DeviceID 0x%04x EventID 3", devs[i]);
		expect_ack(lpi + 3, "DeviceID 0x%04x EventID 3", devs[i]);
		its_must(its_int(devs[i], 0), "INT DeviceID 0x%04x EventID 0", devs[i]);
		expect_ack(lpi, "DeviceID 0x%04x EventID 0", devs[i]);
	}

	printf("-- remap one device with a new ITT, unmap another\n");
	its_must(its_mapd_alloc(0x1234, 3), "MAPD DeviceID 0x1234 (new ITT, 8 events)");
	its_must(its_mapti(0x1234, 7, LPI_BASE + 200, 0), "MAPTI DeviceID 0x1234 EventID 7 -> LPI 8392");
	lpi_config(LPI_BASE + 200, 0xa0, 1);
	its_must(its_inv(0x1234, 7), "INV DeviceID 0x1234 EventID 7");
	its_must(its_int(0x1234, 7), "INT DeviceID 0x1234 EventID 7");
	expect_ack(LPI_BASE + 200, "DeviceID 0x1234 EventID 7");
	its_must(its_mapd(0x0000, 0, 0, 0), "MAPD DeviceID 0x0000 V=0");
	its_translate(0);
	expect_ack(INTID_SPURIOUS, "GITS_TRANSLATER EventID 0 after unmapping DeviceID 0");
	check(!(its_creadr() & 1), "GITS_CREADR.Stalled clear");
	pass();
	return 0;
}
