/*
 * vgic's native helper for Unicorn (vgic/ucnative.py builds and loads it with ctypes).
 *
 * Two kinds of hook run on every guest instruction of a kind, so they must not cross into
 * Python for the ordinary case:
 *
 * - MRS/MSR/SYS: Unicorn calls one hook for every system-register instruction. This one
 *   looks the encoding up in a bitmap and calls Python only for the registers vgic owns
 *   (ICC_*, the timers); for an MRS Python answers it writes the value and steps the PC.
 * - Block: called at the start of every translated block. It ends the run (before the
 *   block executes) when a pending interrupt has just been unmasked, when the host asked
 *   for a stop, or, every `check_every` blocks, when the slice's deadline has passed.
 *
 * Nothing here includes Unicorn's headers: the few types are restated and the Unicorn
 * functions used are passed in as pointers, so the helper binds to the very library the
 * Python binding loaded.
 */
#include <stdint.h>
#include <time.h>

typedef struct {
    uint32_t crn, crm, op0, op1, op2;
    uint64_t val;
} vgic_cp_reg; /* uc_arm64_cp_reg */

typedef int (*vgic_reg_fn)(void *uc, int regid, void *value); /* uc_reg_read / uc_reg_write */
typedef int (*vgic_stop_fn)(void *uc);                        /* uc_emu_stop */
/* MRS: fill *value and return 1 when answered, 0 to leave the register to Unicorn. */
typedef int (*vgic_read_cb)(uint32_t enc, uint64_t *value);
/* MSR and SYS: return 1 when handled (the instruction is skipped), 0 to let Unicorn run it. */
typedef int (*vgic_write_cb)(uint32_t enc, uint64_t value);

enum { VGIC_MRS, VGIC_MSR, VGIC_SYS };
enum { VGIC_STOP_NONE, VGIC_STOP_DEADLINE, VGIC_STOP_UNMASKED, VGIC_STOP_REQUESTED };

struct vgic_cpu {
    uint8_t owned[3][8192]; /* a bit per encoding op0:op1:CRn:CRm:op2, per instruction kind */
    vgic_read_cb on_mrs;
    vgic_write_cb on_msr;
    vgic_write_cb on_sys;
    vgic_reg_fn reg_read;
    vgic_reg_fn reg_write;
    vgic_stop_fn emu_stop;
    int32_t reg_pc, reg_pstate;
    uint32_t wake_mask;   /* PSTATE.{I,F} bits masking a pending interrupt (0: none pending) */
    uint32_t stop_now;    /* set by the host: end the run at the next block */
    uint32_t check_every; /* blocks between two looks at the clock */
    uint32_t countdown;
    uint32_t stop_reason;
    uint32_t pad;
    int64_t deadline_ns; /* CLOCK_MONOTONIC time at which the run ends */
    uint64_t blocks;
};

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
    if (!owned(c, VGIC_SYS, enc))
        return 0;
    if (reg)
        c->reg_read(uc, reg, &value);
    if (!c->on_sys(enc, value))
        return 0;
    step(uc, c);
    return 1;
}

void vgic_block_hook(void *uc, uint64_t address, uint32_t size, void *user)
{
    struct vgic_cpu *c = user;
    (void)address;
    (void)size;
    c->blocks++;
    if (!(c->stop_now | c->wake_mask) && --c->countdown)
        return; /* the usual case: nothing asked, not yet time to look at the clock */
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
    if (c->countdown == 0 || --c->countdown == 0) {
        struct timespec ts;
        c->countdown = c->check_every;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        if ((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec >= c->deadline_ns) {
            c->stop_reason = VGIC_STOP_DEADLINE;
            c->emu_stop(uc);
        }
    }
}
