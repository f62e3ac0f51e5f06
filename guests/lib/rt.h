/* vgic guest runtime: shared declarations for the bare-metal GICv3/ITS guests. */
#ifndef VGIC_RT_H
#define VGIC_RT_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef signed int s32;
typedef signed long s64;
typedef unsigned long size_t;
typedef __builtin_va_list va_list;
#define va_start(ap, last) __builtin_va_start(ap, last)
#define va_arg(ap, type) __builtin_va_arg(ap, type)
#define va_end(ap) __builtin_va_end(ap)

#define NULL ((void *)0)
#define MAX_CPUS 8
#define BIT(n) (1UL << (n))

/* ---- platform (QEMU virt) ---- */
#define UART_BASE 0x09000000UL
#define GICD_BASE 0x08000000UL
#define GITS_BASE 0x08080000UL
#define GICR_BASE 0x080A0000UL
#define GICR_STRIDE 0x20000UL
#define GICR_SGI_OFF 0x10000UL
#define RAM_BASE 0x40000000UL

/* ---- MMIO: explicit single-copy accesses (64-bit stores are one `str x`) ---- */
static inline void w32(u64 a, u32 v) { __asm__ volatile("str %w0, [%1]" ::"rZ"(v), "r"(a) : "memory"); }
static inline void w64(u64 a, u64 v) { __asm__ volatile("str %x0, [%1]" ::"rZ"(v), "r"(a) : "memory"); }
static inline void w8(u64 a, u8 v) { __asm__ volatile("strb %w0, [%1]" ::"rZ"(v), "r"(a) : "memory"); }
static inline u32 r32(u64 a) { u32 v; __asm__ volatile("ldr %w0, [%1]" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u64 r64(u64 a) { u64 v; __asm__ volatile("ldr %x0, [%1]" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u8 r8(u64 a) { u32 v; __asm__ volatile("ldrb %w0, [%1]" : "=r"(v) : "r"(a) : "memory"); return (u8)v; }

#define dsb(opt) __asm__ volatile("dsb " #opt ::: "memory")
#define dmb(opt) __asm__ volatile("dmb " #opt ::: "memory")
#define isb() __asm__ volatile("isb" ::: "memory")
#define wfi() __asm__ volatile("wfi" ::: "memory")
#define cpu_relax() __asm__ volatile("yield" ::: "memory")

#define read_sysreg(r) ({ u64 __v; __asm__ volatile("mrs %0, " #r : "=r"(__v)::"memory"); __v; })
#define write_sysreg(r, v) __asm__ volatile("msr " #r ", %x0" ::"rZ"((u64)(v)) : "memory")

/* GICv3 CPU interface by encoding, so any assembler accepts them */
#define ICC_PMR_EL1 S3_0_C4_C6_0
#define ICC_IAR1_EL1 S3_0_C12_C12_0
#define ICC_EOIR1_EL1 S3_0_C12_C12_1
#define ICC_HPPIR1_EL1 S3_0_C12_C12_2
#define ICC_BPR1_EL1 S3_0_C12_C12_3
#define ICC_CTLR_EL1 S3_0_C12_C12_4
#define ICC_SRE_EL1 S3_0_C12_C12_5
#define ICC_IGRPEN1_EL1 S3_0_C12_C12_7
#define ICC_SGI1R_EL1 S3_0_C12_C11_5
#define ICC_RPR_EL1 S3_0_C12_C11_3
#define ICC_DIR_EL1 S3_0_C12_C11_1
#define ICC_AP1R0_EL1 S3_0_C12_C9_0
#define __rs(r) read_sysreg(r)
#define __ws(r, v) write_sysreg(r, v)
#define icc_read(r) __rs(r)
#define icc_write(r, v) __ws(r, v)

static inline void irq_enable(void) { __asm__ volatile("msr daifclr, #2" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("msr daifset, #2" ::: "memory"); }

/* ---- start.S ---- */
extern u64 boot_dtb;                 /* x0 at entry */
extern void secondary_entry(void);   /* PSCI CPU_ON entry point, x0 = context id */
int cpu_index(void);                 /* Aff0 + 16*Aff1 */
void secondary_main(u64 ctx);        /* weak: provided by a guest that starts secondaries */

/* ---- uart.c ---- */
void uart_putc(char c);
void uart_puts(const char *s);
int uart_getc(u32 timeout_loops);    /* -1 on timeout */
void printf(const char *fmt, ...);
void vprintf(const char *fmt, va_list ap);

/* ---- util (uart.c) ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
void *alloc(size_t size, size_t align);  /* zeroed, from the heap after the image */
void fail(const char *fmt, ...) __attribute__((noreturn));          /* prints "FAIL: ...", powers off */
void pass(void);                          /* prints "PASS", powers off */
extern int fail_count;
void check(int cond, const char *fmt, ...); /* prints "check ok/FAILED: ..." */

/* ---- psci.c ---- */
#define PSCI_SYSTEM_OFF 0x84000008UL
#define PSCI_CPU_ON 0xC4000003UL
#define PSCI_AFFINITY_INFO 0xC4000004UL
#define PSCI_VERSION 0x84000000UL
s64 psci_call(u64 fn, u64 a1, u64 a2, u64 a3);
void psci_system_off(void) __attribute__((noreturn));
s64 psci_cpu_on(u64 mpidr, void (*entry)(void), u64 ctx);
s64 psci_affinity_info(u64 mpidr);
u64 cpu_mpidr(int idx);              /* MPIDR affinity value of CPU index idx */
/* start CPUs 1..n-1; returns how many came up (they signal with smp_ready()) */
int smp_start(int n);
void smp_ready(int cpu);
int smp_wait_ready(int cpu, u32 loops);

/* ---- gic.c ---- */
#define GICD_CTLR 0x0000
#define GICD_TYPER 0x0004
#define GICD_IIDR 0x0008
#define GICR_CTLR 0x0000
#define GICR_IIDR 0x0004
#define GICR_TYPER 0x0008
#define GICR_WAKER 0x0014
#define GICR_PROPBASER 0x0070
#define GICR_PENDBASER 0x0078
#define GICR_IGROUPR0 0x0080
#define GICR_ISENABLER0 0x0100
#define GICR_ICENABLER0 0x0180
#define GICR_ISPENDR0 0x0200
#define GICR_ICPENDR0 0x0280
#define GICR_IPRIORITYR 0x0400
#define LPI_BASE 8192
#define INTID_SPURIOUS 1023

struct gic_cpu {
	u64 rd;          /* RD_base of this CPU's redistributor */
	u64 typer;       /* GICR_TYPER */
	u32 procnum;     /* GICR_TYPER.Processor_Number */
	u64 pend;        /* pending table PA */
};
extern struct gic_cpu gic_cpus[MAX_CPUS];
extern u8 *lpi_prop;           /* LPI configuration table */
extern u32 lpi_idbits;         /* number of LPI INTID bits (PROPBASER.IDbits + 1) */

void gic_dist_init(void);
u64 gic_find_redist(u64 mpidr);  /* 0 when not found */
int gic_cpu_init(int cpu);       /* find RD, wake it, CPU interface on; 0 ok */
void gic_lpi_tables_alloc(u32 idbits); /* property table (shared); call once on CPU0 */
void gic_lpi_pend_alloc(int cpu);       /* pending table for one CPU (zeroed) */
void gic_lpi_enable(int cpu);           /* PROPBASER, PENDBASER, EnableLPIs */
void lpi_config(u32 intid, u8 prio, int enable); /* writes the property byte */
/* the usual bring-up on CPU0: distributor, CPU0's redistributor, the LPI tables for
 * idbits INTID bits, a pending table for each of ncpu CPUs, LPIs on for CPU0 */
void gic_lpi_bringup(int ncpu, u32 idbits);
/* a secondary that only takes interrupts: redistributor, LPIs and IRQs on, ready, WFI */
void secondary_idle(int cpu) __attribute__((noreturn));
static inline u32 gic_ack(void) { return (u32)icc_read(ICC_IAR1_EL1) & 0xffffff; }
static inline void gic_eoi(u32 intid) { icc_write(ICC_EOIR1_EL1, intid); isb(); }
u32 gic_poll_ack(u32 loops);     /* poll IAR1 until not spurious or timeout (1023) */
void gic_ppi_sgi_config(int cpu, u32 intid, u8 prio, int enable);
void gic_send_sgi1(u32 intid, u32 aff1, u16 targetlist);

/* IRQ dispatch: the vector calls irq_handler_c, which acknowledges and calls irq_hook */
extern void (*volatile irq_hook)(int cpu, u32 intid);
/* per-CPU receive log filled by the default hook */
#define LOG_MAX 64
struct irq_log {
	volatile u32 n;
	volatile u32 ids[LOG_MAX];
};
extern struct irq_log irq_logs[MAX_CPUS];
void irq_log_record(int cpu, u32 intid);
void irq_log_print(int cpu);         /* "cpuN: id id ...", one line */
int irq_log_wait(int cpu, u32 count, u32 loops);

/* ---- its.c ---- */
#define GITS_CTLR 0x0000
#define GITS_IIDR 0x0004
#define GITS_TYPER 0x0008
#define GITS_CBASER 0x0080
#define GITS_CWRITER 0x0088
#define GITS_CREADR 0x0090
#define GITS_BASER(n) (0x0100 + 8 * (n))
#define GITS_PIDR2 0xFFE8
#define GITS_TRANSLATER 0x10040

struct its_table {
	int idx;          /* BASER index, -1 if none */
	u32 type, esz, page;
	int indirect;
	u64 base;
	u32 pages;
	u64 baser;        /* value read back */
};

struct its {
	u64 base;
	u64 typer;
	u32 ite_size, idbits, devbits, cidbits;
	int pta;
	u64 cmdq;
	u32 cmdq_bytes;
	u32 wr;
	struct its_table dev, coll;
};
extern struct its its;

/* status returned by the command helpers */
#define ITS_OK 0
#define ITS_STALLED 1
#define ITS_TIMEOUT 2

int its_init(int two_level_dt, u32 dt_page_size);
extern u32 its_coll_page;        /* page size its_init asks for the collection table (4 KB) */
u64 its_rdbase(int cpu);         /* value for RDbase fields, already shifted to [51:16] */
void its_queue(u64 dw0, u64 dw1, u64 dw2, u64 dw3);
int its_kick(void);              /* write CWRITER and wait */
int its_cmd(u64 dw0, u64 dw1, u64 dw2, u64 dw3);
u64 its_creadr(void);
int its_wait(u32 loops);
int its_device_ensure(u32 devid); /* two-level: allocate the L2 page; 0 ok, -1 no table */
u64 its_itt_alloc(u32 eventbits);
int its_mapd(u32 dev, u64 itt, u32 size, int valid);
int its_mapd_alloc(u32 dev, u32 eventbits); /* ensure + ITT alloc + MAPD V=1 */
int its_mapc(u32 icid, u64 rdbase, int valid);
int its_mapti(u32 dev, u32 ev, u32 pintid, u32 icid);
int its_mapi(u32 dev, u32 ev, u32 icid);
int its_movi(u32 dev, u32 ev, u32 icid);
int its_movall(u64 rd1, u64 rd2);
int its_discard(u32 dev, u32 ev);
int its_inv(u32 dev, u32 ev);
int its_invall(u32 icid);
int its_int(u32 dev, u32 ev);
int its_clear(u32 dev, u32 ev);
int its_sync(u64 rdbase);
static inline void its_translate(u32 ev) { w32(its.base + GITS_TRANSLATER, ev); dsb(sy); }

/* ---- mmu.c ---- */
int mmu_enable(u32 granule);     /* 4096 or 65536 (16384 when the CPU has it); identity map */
void mmu_enable_secondary(void); /* same tables on another CPU */

/* ---- spinlock / barrier ---- */
typedef struct { volatile u32 v; } spinlock_t;
void spin_lock(spinlock_t *l);
void spin_unlock(spinlock_t *l);

const char *its_status(int st);
void its_must(int st, const char *fmt, ...);
u32 expect_ack(u32 want, const char *fmt, ...);

#endif
