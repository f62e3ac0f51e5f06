/* GICv3 ITS driver: command queue, BASER probing (flat and two-level tables), commands. */
#include "rt.h"

struct its its;
u32 its_coll_page = 0x1000; /* page size asked for the collection table (kept if it sticks) */

#define BASER_VALID BIT(63)
#define BASER_INDIRECT BIT(62)
#define BASER_ATTRS ((7UL << 59) | (1UL << 10)) /* InnerCache RaWaWb, Inner Shareable */
#define CMDQ_BYTES 0x10000

static u32 page_code(u32 page)
{
	return page == 0x10000 ? 2 : page == 0x4000 ? 1 : 0;
}

static u32 code_page(u32 code)
{
	return code == 2 || code == 3 ? 0x10000 : code == 1 ? 0x4000 : 0x1000;
}

/* Program BASER t->idx for `ids` IDs (flat: capped at `flat_pages` pages). */
static void table_setup(struct its_table *t, u32 idbits, int want_indirect, u32 page, u32 flat_pages)
{
	u64 reg = its.base + GITS_BASER(t->idx);
	/* page size: keep ours if it sticks, else use what the register offers */
	w64(reg, (u64)page_code(page) << 8);
	t->page = code_page((u32)(r64(reg) >> 8) & 3);
	if (want_indirect) {
		w64(reg, BASER_INDIRECT | ((u64)page_code(t->page) << 8));
		t->indirect = (r64(reg) & BASER_INDIRECT) ? 1 : 0;
	}
	if (t->indirect) {
		u64 per_l2 = t->page / t->esz;
		u64 l1_entries = ((1UL << idbits) + per_l2 - 1) / per_l2;
		t->pages = (u32)((l1_entries * 8 + t->page - 1) / t->page);
	} else if (want_indirect) {
		/* two levels refused (Indirect is RAZ/WI): one flat table for every ID, up to 256 pages */
		u64 pages = (((1UL << idbits) * t->esz) + t->page - 1) / t->page;
		t->pages = pages > 256 ? 256 : (u32)pages;
	} else {
		t->pages = flat_pages;
	}
	t->base = (u64)alloc((u64)t->pages * t->page, t->page);
	u64 v = BASER_VALID | BASER_ATTRS | ((u64)page_code(t->page) << 8) | t->base | (t->pages - 1);
	if (t->indirect)
		v |= BASER_INDIRECT;
	w64(reg, v);
	t->baser = r64(reg);
}

int its_init(int two_level_dt, u32 dt_page)
{
	its.base = GITS_BASE;
	its.typer = r64(its.base + GITS_TYPER);
	its.ite_size = (u32)((its.typer >> 4) & 0xf) + 1;
	its.idbits = (u32)((its.typer >> 8) & 0x1f) + 1;
	its.devbits = (u32)((its.typer >> 13) & 0x1f) + 1;
	its.cidbits = (its.typer & BIT(36)) ? (u32)((its.typer >> 32) & 0xf) + 1 : 16;
	its.pta = (its.typer & BIT(19)) ? 1 : 0;
	its.dev.idx = its.coll.idx = -1;

	/* disabled and quiescent before the tables are programmed */
	w32(its.base + GITS_CTLR, r32(its.base + GITS_CTLR) & ~1U);
	for (u32 i = 0; i < 1000000 && !(r32(its.base + GITS_CTLR) & BIT(31)); i++)
		cpu_relax();

	its.cmdq = (u64)alloc(CMDQ_BYTES, 0x10000);
	its.cmdq_bytes = CMDQ_BYTES;
	w64(its.base + GITS_CBASER, BASER_VALID | BASER_ATTRS | its.cmdq | (CMDQ_BYTES / 0x1000 - 1));
	w64(its.base + GITS_CWRITER, 0);
	its.wr = 0;

	for (int n = 0; n < 8; n++) {
		u64 v = r64(its.base + GITS_BASER(n));
		u32 type = (u32)(v >> 56) & 7;
		struct its_table *t = type == 1 ? &its.dev : type == 4 ? &its.coll : NULL;
		if (!t || t->idx >= 0)
			continue;
		t->idx = n;
		t->type = type;
		t->esz = (u32)((v >> 48) & 0x1f) + 1;
	}
	if (its.dev.idx < 0)
		return -1;
	table_setup(&its.dev, its.devbits, two_level_dt, dt_page ? dt_page : 0x1000, 1);
	if (its.coll.idx >= 0)
		table_setup(&its.coll, its.cidbits, 0, its_coll_page, 1);

	w32(its.base + GITS_CTLR, r32(its.base + GITS_CTLR) | 1);
	dsb(sy);
	return (r32(its.base + GITS_CTLR) & 1) ? 0 : -2;
}

u64 its_rdbase(int cpu)
{
	if (its.pta)
		return gic_cpus[cpu].rd & 0x000fffffffff0000UL;
	return (u64)gic_cpus[cpu].procnum << 16;
}

void its_queue(u64 dw0, u64 dw1, u64 dw2, u64 dw3)
{
	volatile u64 *c = (volatile u64 *)(its.cmdq + its.wr);
	c[0] = dw0;
	c[1] = dw1;
	c[2] = dw2;
	c[3] = dw3;
	its.wr = (its.wr + 32) % its.cmdq_bytes;
}

u64 its_creadr(void)
{
	return r64(its.base + GITS_CREADR);
}

/* done when CREADR.Offset reaches our write offset; stalled when it stops short with
 * Stalled set (an ITS may leave Stalled set after a later restart: the offset decides) */
int its_wait(u32 loops)
{
	for (u32 i = 0; i < loops; i++) {
		u64 c = its_creadr();
		if ((c & 0xfffe0) == its.wr)
			return ITS_OK;
		if (c & 1)
			return ITS_STALLED;
		cpu_relax();
	}
	return ITS_TIMEOUT;
}

int its_kick(void)
{
	dsb(sy);
	w64(its.base + GITS_CWRITER, its.wr);
	return its_wait(1000000);
}

int its_cmd(u64 dw0, u64 dw1, u64 dw2, u64 dw3)
{
	its_queue(dw0, dw1, dw2, dw3);
	return its_kick();
}

int its_device_ensure(u32 dev)
{
	struct its_table *t = &its.dev;
	if (!t->indirect)
		return (u64)dev < (u64)t->pages * t->page / t->esz ? 0 : -1;
	u64 per_l2 = t->page / t->esz;
	u64 l1i = dev / per_l2;
	if (l1i >= (u64)t->pages * t->page / 8)
		return -1;
	volatile u64 *l1 = (volatile u64 *)t->base;
	if (!(l1[l1i] & BIT(63))) {
		u64 l2 = (u64)alloc(t->page, t->page);
		l1[l1i] = l2 | BIT(63);
		dsb(sy);
	}
	return 0;
}

u64 its_itt_alloc(u32 eventbits)
{
	u64 bytes = (1UL << eventbits) * its.ite_size;
	return (u64)alloc(bytes < 256 ? 256 : bytes, 256);
}

#define DEV(d) ((u64)(d) << 32)

int its_mapd(u32 dev, u64 itt, u32 size, int valid)
{
	return its_cmd(0x08 | DEV(dev), size & 0x1f, (itt & 0x000fffffffffff00UL) | (valid ? BIT(63) : 0), 0);
}

int its_mapd_alloc(u32 dev, u32 eventbits)
{
	if (its_device_ensure(dev))
		return -1;
	return its_mapd(dev, its_itt_alloc(eventbits), eventbits - 1, 1);
}

int its_mapc(u32 icid, u64 rdbase, int valid)
{
	return its_cmd(0x09, 0, (icid & 0xffff) | (rdbase & 0x000fffffffff0000UL) | (valid ? BIT(63) : 0), 0);
}

int its_mapti(u32 dev, u32 ev, u32 pintid, u32 icid)
{
	return its_cmd(0x0a | DEV(dev), ev | ((u64)pintid << 32), icid & 0xffff, 0);
}

int its_mapi(u32 dev, u32 ev, u32 icid)
{
	return its_cmd(0x0b | DEV(dev), ev, icid & 0xffff, 0);
}

int its_movi(u32 dev, u32 ev, u32 icid)
{
	return its_cmd(0x01 | DEV(dev), ev, icid & 0xffff, 0);
}

int its_movall(u64 rd1, u64 rd2)
{
	return its_cmd(0x0e, 0, rd1 & 0x000fffffffff0000UL, rd2 & 0x000fffffffff0000UL);
}

int its_discard(u32 dev, u32 ev) { return its_cmd(0x0f | DEV(dev), ev, 0, 0); }
int its_inv(u32 dev, u32 ev) { return its_cmd(0x0c | DEV(dev), ev, 0, 0); }
int its_invall(u32 icid) { return its_cmd(0x0d, 0, icid & 0xffff, 0); }
int its_int(u32 dev, u32 ev) { return its_cmd(0x03 | DEV(dev), ev, 0, 0); }
int its_clear(u32 dev, u32 ev) { return its_cmd(0x04 | DEV(dev), ev, 0, 0); }
int its_sync(u64 rdbase) { return its_cmd(0x05, 0, rdbase & 0x000fffffffff0000UL, 0); }

const char *its_status(int st)
{
	return st == ITS_OK ? "ok" : st == ITS_STALLED ? "stalled" : "timeout";
}

/* print "<what>: ok" or fail the run */
void its_must(int st, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	if (st != ITS_OK)
		fail("command %s (CREADR 0x%lx)", its_status(st), its_creadr());
	uart_puts(": ok\n");
}
