/* PL011 console, printf-lite, heap, verdict helpers, exception report, spinlock. */
#include "rt.h"

#define UARTDR 0x00
#define UARTFR 0x18
#define FR_TXFF BIT(5)
#define FR_RXFE BIT(4)

u64 boot_dtb;
int fail_count;

void uart_putc(char c)
{
	u32 n = 0;
	if (c == '\n')
		uart_putc('\r');
	while ((r32(UART_BASE + UARTFR) & FR_TXFF) && n++ < 1000000)
		cpu_relax();
	w32(UART_BASE + UARTDR, (u8)c);
}

void uart_puts(const char *s)
{
	while (*s)
		uart_putc(*s++);
}

int uart_getc(u32 loops)
{
	for (u32 i = 0; i < loops; i++)
		if (!(r32(UART_BASE + UARTFR) & FR_RXFE))
			return (int)(r32(UART_BASE + UARTDR) & 0xff);
	return -1;
}

static void put_num(u64 v, int base, int width, int zero, int neg)
{
	char buf[24];
	int n = 0;
	do {
		u32 d = (u32)(v % (u64)base);
		buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
		v /= (u64)base;
	} while (v);
	if (neg)
		width--;
	if (neg && zero)
		uart_putc('-');
	for (int i = n; i < width; i++)
		uart_putc(zero ? '0' : ' ');
	if (neg && !zero)
		uart_putc('-');
	while (n)
		uart_putc(buf[--n]);
}

/* %d %u %x %lx %ld %lu %s %c %p %%, with optional '0' flag and width */
void vprintf(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			uart_putc(*fmt);
			continue;
		}
		fmt++;
		int zero = 0, width = 0, lng = 0;
		if (*fmt == '0') {
			zero = 1;
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l') {
			lng = 1;
			fmt++;
		}
		switch (*fmt) {
		case 'd': {
			s64 v = lng ? va_arg(ap, s64) : va_arg(ap, s32);
			put_num(v < 0 ? (u64)-v : (u64)v, 10, width, zero, v < 0);
			break;
		}
		case 'u':
			put_num(lng ? va_arg(ap, u64) : va_arg(ap, u32), 10, width, zero, 0);
			break;
		case 'x':
			put_num(lng ? va_arg(ap, u64) : va_arg(ap, u32), 16, width, zero, 0);
			break;
		case 'p':
			uart_puts("0x");
			put_num((u64)va_arg(ap, void *), 16, width, zero, 0);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len = 0;
			if (!s)
				s = "(null)";
			for (const char *t = s; *t; t++)
				len++;
			uart_puts(s);
			for (; len < width; len++)
				uart_putc(' ');
			break;
		}
		case 'c':
			uart_putc((char)va_arg(ap, int));
			break;
		case '%':
			uart_putc('%');
			break;
		case 0:
			return;
		default:
			uart_putc('%');
			uart_putc(*fmt);
		}
	}
}

void printf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

/* volatile byte/word stores: the compiler must not turn these into calls to themselves */
void *memset(void *d, int c, size_t n)
{
	volatile u8 *p = d;
	u64 a = (u64)d;
	while (n && (a & 7)) {
		*p++ = (u8)c;
		a++;
		n--;
	}
	u64 w = (u8)c;
	w |= w << 8;
	w |= w << 16;
	w |= w << 32;
	volatile u64 *q = (volatile u64 *)p;
	for (; n >= 8; n -= 8)
		*q++ = w;
	p = (volatile u8 *)q;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	volatile u8 *p = d;
	const volatile u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

extern char __heap_start[];
static u64 heap_next;
#define HEAP_END (RAM_BASE + 0x10000000UL) /* 256 MB of the 512 MB */

void *alloc(size_t size, size_t align)
{
	if (!heap_next)
		heap_next = (u64)__heap_start;
	if (align < 16)
		align = 16;
	u64 p = (heap_next + align - 1) & ~(u64)(align - 1);
	if (p + size > HEAP_END)
		fail("out of heap (%lu bytes)", (u64)size);
	heap_next = p + size;
	memset((void *)p, 0, size);
	dsb(sy);
	return (void *)p;
}

void fail(const char *fmt, ...)
{
	irq_disable();
	va_list ap;
	uart_puts("FAIL: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	uart_putc('\n');
	psci_system_off();
}

void pass(void)
{
	if (fail_count)
		fail("%d check(s) failed", fail_count);
	uart_puts("PASS\n");
	psci_system_off();
}

void check(int cond, const char *fmt, ...)
{
	va_list ap;
	uart_puts(cond ? "check ok: " : "check FAILED: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	uart_putc('\n');
	if (!cond)
		fail_count++;
}

static const char *const exc_names[16] = {
	"sync (EL1t)", "irq (EL1t)", "fiq (EL1t)", "serror (EL1t)",
	"sync (EL1h)", "irq (EL1h)", "fiq (EL1h)", "serror (EL1h)",
	"sync (EL0 a64)", "irq (EL0 a64)", "fiq (EL0 a64)", "serror (EL0 a64)",
	"sync (EL0 a32)", "irq (EL0 a32)", "fiq (EL0 a32)", "serror (EL0 a32)",
};

void exc_report(u64 kind, u64 esr, u64 elr, u64 far) __attribute__((noreturn));
void exc_report(u64 kind, u64 esr, u64 elr, u64 far)
{
	printf("\nunexpected exception %s on cpu%d: ESR=0x%lx ELR=0x%lx FAR=0x%lx\n",
	       exc_names[kind & 15], cpu_index(), esr, elr, far);
	fail("unexpected exception");
	for (;;)
		wfi();
}

void spin_lock(spinlock_t *l)
{
	u32 tmp, one = 1;
	__asm__ volatile("sevl\n"
			 "1: wfe\n"
			 "2: ldaxr %w0, [%1]\n"
			 "cbnz %w0, 1b\n"
			 "stxr %w0, %w2, [%1]\n"
			 "cbnz %w0, 2b\n"
			 : "=&r"(tmp)
			 : "r"(&l->v), "r"(one)
			 : "memory");
}

void spin_unlock(spinlock_t *l)
{
	__asm__ volatile("stlr wzr, [%0]" ::"r"(&l->v) : "memory");
}
