/* EL1h entry for the vgic guests (QEMU virt: entered at the ELF entry point, MMU off,
 * x0 = DTB). Per-CPU stacks by MPIDR affinity, exception vectors at VBAR_EL1. */
#define STACK_SIZE 0x4000
#define MAX_CPUS 8

	.section .text.boot, "ax"
	.global _start
_start:
	msr	daifset, #0xf
	mov	x19, x0			/* DTB */
	/* zero BSS (aligned to 16 by the linker script) */
	adrp	x1, __bss_start
	add	x1, x1, :lo12:__bss_start
	adrp	x2, __bss_end
	add	x2, x2, :lo12:__bss_end
1:	cmp	x1, x2
	b.hs	2f
	stp	xzr, xzr, [x1], #16
	b	1b
2:	adrp	x1, boot_dtb
	str	x19, [x1, :lo12:boot_dtb]
	bl	cpu_setup
	bl	main
	bl	psci_system_off
3:	wfi
	b	3b

	.global secondary_entry
secondary_entry:
	msr	daifset, #0xf
	mov	x19, x0			/* context id */
	bl	cpu_setup
	mov	x0, x19
	bl	secondary_main
4:	wfi
	b	4b

/* stack by CPU index, VBAR, FP access; clobbers x0-x3, keeps x19 */
cpu_setup:
	mov	x3, x30
	bl	cpu_index
	cmp	x0, #MAX_CPUS
	b.hs	park
	add	x0, x0, #1
	adrp	x1, stacks
	add	x1, x1, :lo12:stacks
	mov	x2, #STACK_SIZE
	madd	x1, x0, x2, x1
	mov	sp, x1
	adrp	x1, vectors
	add	x1, x1, :lo12:vectors
	msr	vbar_el1, x1
	mov	x1, #(3 << 20)
	msr	cpacr_el1, x1
	isb
	ret	x3
park:
	wfi
	b	park

	.global cpu_index
cpu_index:			/* Aff0 + 16 * Aff1 */
	mrs	x0, mpidr_el1
	ubfx	x1, x0, #8, #8
	and	x0, x0, #0xff
	add	x0, x0, x1, lsl #4
	ret

	.weak secondary_main
secondary_main:
	wfi
	b	secondary_main

/* ---- exception vectors ---- */
.macro	bad_vector kind
	.balign	0x80
	mov	x0, #\kind
	mrs	x1, esr_el1
	mrs	x2, elr_el1
	mrs	x3, far_el1
	b	exc_report
.endm

	.section .text.vectors, "ax"
	.balign	2048
	.global vectors
vectors:
	bad_vector 0	/* sync, EL1 SP0 */
	bad_vector 1	/* irq, EL1 SP0 */
	bad_vector 2	/* fiq, EL1 SP0 */
	bad_vector 3	/* serror, EL1 SP0 */
	bad_vector 4	/* sync, EL1 SPx */
	.balign	0x80	/* 0x280: IRQ, EL1 SPx */
	b	irq_entry
	bad_vector 6	/* fiq, EL1 SPx */
	bad_vector 7	/* serror, EL1 SPx */
	bad_vector 8
	bad_vector 9
	bad_vector 10
	bad_vector 11
	bad_vector 12
	bad_vector 13
	bad_vector 14
	bad_vector 15

irq_entry:
	sub	sp, sp, #192
	stp	x0, x1, [sp, #0]
	stp	x2, x3, [sp, #16]
	stp	x4, x5, [sp, #32]
	stp	x6, x7, [sp, #48]
	stp	x8, x9, [sp, #64]
	stp	x10, x11, [sp, #80]
	stp	x12, x13, [sp, #96]
	stp	x14, x15, [sp, #112]
	stp	x16, x17, [sp, #128]
	stp	x18, x29, [sp, #144]
	mrs	x0, elr_el1
	mrs	x1, spsr_el1
	stp	x30, x0, [sp, #160]
	str	x1, [sp, #176]
	bl	irq_handler_c
	ldr	x1, [sp, #176]
	ldp	x30, x0, [sp, #160]
	msr	elr_el1, x0
	msr	spsr_el1, x1
	ldp	x18, x29, [sp, #144]
	ldp	x16, x17, [sp, #128]
	ldp	x14, x15, [sp, #112]
	ldp	x12, x13, [sp, #96]
	ldp	x10, x11, [sp, #80]
	ldp	x8, x9, [sp, #64]
	ldp	x6, x7, [sp, #48]
	ldp	x4, x5, [sp, #32]
	ldp	x2, x3, [sp, #16]
	ldp	x0, x1, [sp, #0]
	add	sp, sp, #192
	eret

	.section .bss.stacks, "aw", %nobits
	.balign	16
	.global stacks
stacks:
	.space	STACK_SIZE * (MAX_CPUS + 1)
