/* PSCI 0.2 over HVC (QEMU virt: method "hvc"), and secondary CPU start-up. */
#include "rt.h"

s64 psci_call(u64 fn, u64 a1, u64 a2, u64 a3)
{
	register u64 x0 __asm__("x0") = fn;
	register u64 x1 __asm__("x1") = a1;
	register u64 x2 __asm__("x2") = a2;
	register u64 x3 __asm__("x3") = a3;
	__asm__ volatile("hvc #0" : "+r"(x0), "+r"(x1), "+r"(x2), "+r"(x3)::"memory", "x4", "x5",
			 "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16",
			 "x17");
	return (s64)x0;
}

void psci_system_off(void)
{
	psci_call(PSCI_SYSTEM_OFF, 0, 0, 0);
	for (;;)
		wfi();
}

s64 psci_cpu_on(u64 mpidr, void (*entry)(void), u64 ctx)
{
	return psci_call(PSCI_CPU_ON, mpidr, (u64)entry, ctx);
}

s64 psci_affinity_info(u64 mpidr)
{
	return psci_call(PSCI_AFFINITY_INFO, mpidr, 0, 0);
}

/* QEMU virt with GICv3 numbers CPUs Aff0 = index % 16, Aff1 = index / 16 */
u64 cpu_mpidr(int idx)
{
	return ((u64)(idx / 16) << 8) | (u64)(idx % 16);
}

static volatile u32 cpu_ready[MAX_CPUS];

void smp_ready(int cpu)
{
	dsb(sy);
	cpu_ready[cpu] = 1;
	dsb(sy);
	__asm__ volatile("sev");
}

int smp_wait_ready(int cpu, u32 loops)
{
	for (u32 i = 0; i < loops; i++) {
		dmb(sy);
		if (cpu_ready[cpu])
			return 1;
		cpu_relax();
	}
	return 0;
}

/* CPU_ON for CPUs 1..n-1 one at a time (context id = CPU index), each waited for before
 * the next, so bring-up order is deterministic. Returns the number of CPUs running. */
int smp_start(int n)
{
	int up = 1;
	for (int i = 1; i < n && i < MAX_CPUS; i++) {
		s64 r = psci_cpu_on(cpu_mpidr(i), secondary_entry, (u64)i);
		if (r != 0) {
			printf("psci: CPU_ON cpu%d returned %ld\n", i, r);
			break;
		}
		if (!smp_wait_ready(i, 50000000)) {
			printf("psci: cpu%d did not report ready\n", i);
			break;
		}
		up++;
	}
	return up;
}
