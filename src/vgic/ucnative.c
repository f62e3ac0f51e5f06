/*
 * vgic's native helper for Unicorn (vgic/ucnative.py builds and loads it with ctypes).
 *
 * Two kinds of hook run on every guest instruction of a kind, so they must not cross into
 * Python for the ordinary case:
 *
 * - MRS/MSR/SYS: Unicorn calls one hook for every system-register instruction. This one
 *   looks the encoding up in a bitmap and calls Python only for the registers vgic owns
 *   (ICC_*, the timers); for an MRS Python answers it writes the value and steps the PC.
 *   DC ZVA to RAM is done here: Unicorn's own zeroes the 64-byte block with 64 one-byte
 *   stores through its slow store path (it keeps no dirty-page bitmap, so it never takes
 *   its memset path), about 25 times slower than one physical write of the block. A
 *   physical write does not drop translations of code in the block, so it is only used
 *   for pages this CPU has never run code from (see note_code); others go to Unicorn.
 * - Block: called at the start of every translated block. It ends the run (before the
 *   block executes) when a pending interrupt has just been unmasked, when the host asked
 *   for a stop, after a block that ends in WFE or YIELD (the CPU waits for another one,
 *   which runs only once this one yields), or, every `check_every` blocks, when the
 *   slice's deadline has passed.
 *
 * Nothing here includes Unicorn's headers: the few types are restated and the Unicorn
 * functions used are passed in as pointers, so the helper binds to the very library the
 * Python binding loaded.
 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

typedef struct {
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
} vgic_cp_reg; /* uc_arm64_cp_reg */

typedef int (*vgic_reg_fn)(void *uc, int regid, void *value); /* uc_reg_read / uc_reg_write */
typedef int (*vgic_stop_fn)(void *uc);                        /* uc_emu_stop */
typedef int (*vgic_vmem_fn)(void *uc, uint64_t address, int prot, void *bytes, size_t size); /* uc_vmem_read */
typedef int (*vgic_translate_fn)(void *uc, uint64_t address, int prot, uint64_t *paddress); /* uc_vmem_translate */
typedef int (*vgic_mem_write_fn)(void *uc, uint64_t address, const void *bytes, uint64_t size); /* uc_mem_write */
/* MRS: fill *value and return 1 when answered, 0 to leave the register to Unicorn. */
typedef int (*vgic_read_cb)(uint32_t enc, uint64_t *value);
/* MSR and SYS: return 1 when handled (the instruction is skipped), 0 to let Unicorn run it. */
typedef int (*vgic_write_cb)(uint32_t enc, uint64_t value);

enum { VGIC_MRS, VGIC_MSR, VGIC_SYS };
enum { VGIC_STOP_NONE, VGIC_STOP_DEADLINE, VGIC_STOP_UNMASKED, VGIC_STOP_REQUESTED, VGIC_STOP_WAITING };

#define INSN_WFE 0xD503205Fu
#define INSN_YIELD 0xD503203Fu
#define UC_PROT_WRITE 2
#define UC_PROT_EXEC 4
#define DC_ZVA 0x5BA1u   /* op0=1 op1=3 CRn=7 CRm=4 op2=1 */
#define SCTLR_EL1 0xC080u
#define TTBR0_EL1 0xC100u
#define TTBR1_EL1 0xC101u
#define TCR_EL1 0xC102u
#define ZVA_BLOCK 64     /* DCZID_EL0.BS = 4: 16 words */
#define RAM_REGIONS 8
#define CODE_CACHE 512   /* virtual pages whose code is known to be marked */
#define HINT_CACHE 256 /* blocks seen, by address and size: do they end in WFE/YIELD? */

struct vgic_cpu {
    /* read at every block: kept together */
    uint32_t waiting;       /* the block now running ends in WFE/YIELD: stop at the next */
    uint32_t yield_on_wait; /* end the run after a block that ends in WFE/YIELD */
    uint32_t stop_now;      /* set by the host: end the run at the next block */
    uint32_t wake_mask;     /* PSTATE.{I,F} bits masking a pending interrupt (0: none pending) */
    uint32_t countdown;     /* blocks left before the next look at the clock */
    uint32_t check_every;
    uint32_t stop_reason;
    uint32_t ram_count; /* DC ZVA inside these physical ranges is done here */
    uint32_t zva_count; /* DC ZVAs left to Unicorn (the host turns the fast path on) */
    uint32_t pad;
    uint64_t code_generation; /* 1..4095, in bits 63:52 of the code_cache keys */
    uint64_t last_vpage;      /* the virtual page of the last block, already marked */
    uint64_t blocks;
    int64_t deadline_ns; /* CLOCK_MONOTONIC time at which the run ends */
    int32_t reg_pc, reg_pstate;
    /* Unicorn's functions and Python's callbacks */
    vgic_read_cb on_mrs;
    vgic_write_cb on_msr;
    vgic_write_cb on_sys;
    vgic_reg_fn reg_read;
    vgic_reg_fn reg_write;
    vgic_stop_fn emu_stop;
    vgic_vmem_fn vmem_read;
    vgic_translate_fn vmem_translate;
    vgic_mem_write_fn mem_write;
    /* tables */
    uint64_t code_cache[CODE_CACHE]; /* virtual page | generation << 52 of code already marked */
    uint64_t hint_key[HINT_CACHE];   /* address + size (0: empty) */
    uint8_t hint_wait[HINT_CACHE];
    uint64_t ram_base[RAM_REGIONS];
    uint64_t ram_size[RAM_REGIONS];
    uint8_t *code_map[RAM_REGIONS]; /* a bit per 4 KB page: code ran from it */
    uint8_t owned[3][8192]; /* a bit per encoding op0:op1:CRn:CRm:op2, per instruction kind */
};

/* The layout Python mirrors (vgic/ucnative.py checks it before using the helper). */
size_t vgic_cpu_size(void) { return sizeof(struct vgic_cpu); }
size_t vgic_cpu_offset_of_owned(void) { return offsetof(struct vgic_cpu, owned); }
size_t vgic_cpu_offset_of_mem_write(void) { return offsetof(struct vgic_cpu, mem_write); }

static int ram_page(const struct vgic_cpu *c, uint64_t pa, uint32_t *region, uint64_t *page)
{
    for (uint32_t i = 0; i < c->ram_count; i++) {
        if (pa - c->ram_base[i] < c->ram_size[i]) {
            *region = i;
            *page = (pa - c->ram_base[i]) >> 12;
            return 1;
        }
    }
    return 0;
}

static void mark_code(void *uc, struct vgic_cpu *c, uint64_t va)
{
    uint64_t pa = 0, page = 0;
    uint32_t region = 0;
    if (c->vmem_translate(uc, va, UC_PROT_EXEC, &pa) == 0 && ram_page(c, pa, &region, &page))
        c->code_map[region][page >> 3] |= (uint8_t)(1u << (page & 7));
}

/* Record the physical pages of the code this CPU runs, so that DC ZVA knows where it
 * must let Unicorn drop translations. Conservative: a page once marked stays marked;
 * the cache by virtual page is invalidated on everything that may change a mapping
 * (TTBRn, TCR or SCTLR writes, any TLBI; by VA for TLBI by VA). */
static void note_page(void *uc, struct vgic_cpu *c, uint64_t va)
{
    uint64_t vpage = va >> 12;
    uint64_t key = vpage | c->code_generation << 52;
    unsigned slot = (unsigned)(vpage % CODE_CACHE);
    if (c->code_cache[slot] == key)
        return;
    c->code_cache[slot] = key;
    mark_code(uc, c, va);
}

static void note_code(void *uc, struct vgic_cpu *c, uint64_t address, uint32_t size)
{
    if (address >> 12 != c->last_vpage) { /* most blocks follow one on the same page */
        note_page(uc, c, address);
        c->last_vpage = address >> 12;
    }
    if (size && (address & 0xFFF) + size > 0x1000)
        note_page(uc, c, address + size - 1); /* a block that runs into the next page */
}

static void forget_mappings(struct vgic_cpu *c)
{
    c->last_vpage = ~(uint64_t)0;
    if (++c->code_generation == 4096) { /* out of generations: start again, cache empty */
        c->code_generation = 1;
        for (unsigned i = 0; i < CODE_CACHE; i++)
            c->code_cache[i] = 0;
    }
}

/* TLBI by VA (VAE1, VALE1, VAAE1, VAALE1 and their IS forms: op2 odd) names one page:
 * Xt[43:0] = VA[55:12], VA[63:56] a copy of bit 55 (Arm ARM D8.13.4). */
static void forget_mapping_of(struct vgic_cpu *c, uint32_t enc, uint64_t xt)
{
    if (!(enc & 1)) {
        forget_mappings(c); /* VMALLE1, ASIDE1: everything */
        return;
    }
    uint64_t vpage = xt & 0xFFFFFFFFFFFull;
    if (vpage >> 43 & 1)
        vpage |= 0xFFull << 44;
    unsigned slot = (unsigned)(vpage % CODE_CACHE);
    if (c->code_cache[slot] == (vpage | c->code_generation << 52))
        c->code_cache[slot] = 0;
    if (c->last_vpage == vpage)
        c->last_vpage = ~(uint64_t)0;
}

/* DC ZVA (Arm ARM C5.3.19): zero the 64-byte block holding VA Xt, when it translates for
 * writing to RAM. The write goes through uc_mem_write on the physical address, which
 * also drops this engine's translations of code there. Anything else (a fault, MMIO) is
 * left to Unicorn, which raises the abort or performs the device writes. */
static int zva(void *uc, struct vgic_cpu *c, uint64_t va)
{
    static const uint8_t zeros[ZVA_BLOCK];
    uint64_t pa = 0, page = 0;
    uint32_t region = 0;
    if (c->vmem_translate(uc, va & ~(uint64_t)(ZVA_BLOCK - 1), UC_PROT_WRITE, &pa) != 0)
        return 0;
    if (!ram_page(c, pa, &region, &page) || c->code_map[region][page >> 3] >> (page & 7) & 1)
        return 0;
    return c->mem_write(uc, pa, zeros, ZVA_BLOCK) == 0;
}

/* Does the block at `address` end in WFE or YIELD? Unicorn ends a block at either, so
 * it is the last instruction. Verdicts are cached by address and size: a stale one (the
 * code or the mapping changed) only costs or saves a yield, never correctness. */
static int ends_waiting(void *uc, struct vgic_cpu *c, uint64_t address, uint32_t size)
{
    unsigned slot = (unsigned)(address >> 2) % HINT_CACHE;
    uint64_t key = address + size;
    uint32_t insn = 0;
    if (c->hint_key[slot] == key)
        return c->hint_wait[slot];
    if (c->vmem_read(uc, address + size - 4, UC_PROT_EXEC, &insn, 4) != 0)
        return 0;
    c->hint_key[slot] = key;
    c->hint_wait[slot] = insn == INSN_WFE || insn == INSN_YIELD;
    return c->hint_wait[slot];
}

static uint32_t encoding(const vgic_cp_reg *cp)
{
    return (cp->op0 & 3) << 14 | (cp->op1 & 7) << 11 | (cp->crn & 15) << 7 | (cp->crm & 15) << 3 | (cp->op2 & 7);
}

static int owned(const struct vgic_cpu *c, int kind, uint32_t enc)
{
    return c->owned[kind][enc >> 3] >> (enc & 7) & 1;
}

static void step(void *uc, struct vgic_cpu *c)
{
    uint64_t pc = 0;
    c->reg_read(uc, c->reg_pc, &pc);
    pc += 4;
    c->reg_write(uc, c->reg_pc, &pc);
}

uint32_t vgic_mrs_hook(void *uc, int reg, const vgic_cp_reg *cp, void *user)
{
    struct vgic_cpu *c = user;
    uint32_t enc = encoding(cp);
    uint64_t value = 0;
    if (!owned(c, VGIC_MRS, enc) || !c->on_mrs(enc, &value))
        return 0;
    c->reg_write(uc, reg, &value);
    step(uc, c);
    return 1;
}

uint32_t vgic_msr_hook(void *uc, int reg, const vgic_cp_reg *cp, void *user)
{
    struct vgic_cpu *c = user;
    uint32_t enc = encoding(cp);
    if (enc == TTBR0_EL1 || enc == TTBR1_EL1 || enc == TCR_EL1 || enc == SCTLR_EL1)
        forget_mappings(c);
    if (!owned(c, VGIC_MSR, enc) || !c->on_msr(enc, cp->val))
        return 0;
    step(uc, c);
    return 1;
}

uint32_t vgic_sys_hook(void *uc, int reg, const vgic_cp_reg *cp, void *user)
{
    struct vgic_cpu *c = user;
    uint32_t enc = encoding(cp);
    uint64_t value = 0;
    if (enc >> 14 == 1 && (enc >> 7 & 15) == 8) { /* TLBI */
        uint64_t xt = 0;
        if (reg)
            c->reg_read(uc, reg, &xt);
        forget_mapping_of(c, enc, xt);
    }
    if (enc == DC_ZVA && !c->ram_count)
        c->zva_count++;
    if (enc == DC_ZVA && c->ram_count) {
        if (!reg || c->reg_read(uc, reg, &value) != 0 || !zva(uc, c, value))
            return 0;
        step(uc, c);
        return 1;
    }
    if (!owned(c, VGIC_SYS, enc))
        return 0;
    if (reg)
        c->reg_read(uc, reg, &value);
    if (!c->on_sys(enc, value))
        return 0;
    step(uc, c);
    return 1;
}

static void __attribute__((noinline)) block_slow(void *uc, struct vgic_cpu *c, uint64_t address, uint32_t size)
{
    if (c->waiting) { /* the block before ended in WFE/YIELD */
        c->waiting = 0;
        c->stop_reason = VGIC_STOP_WAITING;
        c->emu_stop(uc);
        return;
    }
    if (c->yield_on_wait && size >= 4 && ends_waiting(uc, c, address, size))
        c->waiting = 1;
    if (c->ram_count)
        note_code(uc, c, address, size);
    if (c->stop_now) {
        c->stop_now = 0;
        c->stop_reason = VGIC_STOP_REQUESTED;
        c->emu_stop(uc);
        return;
    }
    if (c->wake_mask) {
        uint64_t pstate = 0;
        c->reg_read(uc, c->reg_pstate, &pstate);
        if ((pstate & c->wake_mask) != c->wake_mask) {
            c->stop_reason = VGIC_STOP_UNMASKED;
            c->emu_stop(uc);
            return;
        }
    }
    if (c->countdown <= 1) {
        struct timespec ts;
        c->countdown = c->check_every;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec >= c->deadline_ns) {
            c->stop_reason = VGIC_STOP_DEADLINE;
            c->emu_stop(uc);
        }
    } else {
        c->countdown--;
    }
}

void vgic_block_hook(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct vgic_cpu *c = user;
    c->blocks++;
    /* The usual case stays here, with no call: nothing asked, not the clock's turn, and
     * (when code pages are recorded) a block on the page already recorded. */
    if (!(c->waiting | c->yield_on_wait | c->stop_now | c->wake_mask) && c->countdown > 1 &&
        (!c->ram_count || (address >> 12 == c->last_vpage && (address & 0xFFF) + size <= 0x1000))) {
        c->countdown--;
        return;
    }
    block_slow(uc, c, address, size);
}
