/*
 * memtoucher: a small memory toucher for checking the VMs with plain CRIU (before haul's own
 * mtouch exists). Same arguments and stop file as P.Haul's mtouch:
 *
 *   memtoucher LOG SIZE:PRE:PAUSE      e.g. memtoucher touch.log 64m:64m:10000
 *
 * Maps SIZE bytes of anonymous memory (k/m/g suffixes), touches PRE/4096 random pages up
 * front (every page, in order, when PRE >= SIZE, as haul's mtouch does), then one random page
 * every PAUSE microseconds, keeping a one-byte-per-page shadow
 * copy. Every second it appends "tick <unix-ms> <touches>" to LOG (so a reader can see it run
 * and measure gaps). When the file "mem-touch-stop" appears in its working directory it
 * checks every page against the shadow, logs "Mismatch <page>" for each bad one (at most
 * 100), then "Finish <mismatches>", and exits 0 if nothing differed.
 *
 * Build on the host, static, so it runs in any guest: gcc -O2 -static -o memtoucher memtoucher.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static int logfd = -1;

static void logline(const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	if (write(logfd, buf, n) != n)
		_exit(3);
}

static unsigned long size_arg(const char *s, char **end)
{
	unsigned long v = strtoul(s, end, 0);

	switch (**end) {
	case 'g': case 'G': v <<= 30; (*end)++; break;
	case 'm': case 'M': v <<= 20; (*end)++; break;
	case 'k': case 'K': v <<= 10; (*end)++; break;
	}
	return v;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	unsigned long size, pre, pause_us, npages, i, touches = 0, bad = 0;
	unsigned char *mem, *shadow;
	long long last_tick;
	char *p;

	if (argc != 3) {
		fprintf(stderr, "usage: %s LOG SIZE:PRE:PAUSE\n", argv[0]);
		return 2;
	}
	size = size_arg(argv[2], &p);
	pre = *p == ':' ? size_arg(p + 1, &p) : 0;
	pause_us = *p == ':' ? strtoul(p + 1, &p, 0) : 100000;
	npages = size / PAGE;
	if (npages == 0) {
		fprintf(stderr, "memtoucher: SIZE must be at least 4k\n");
		return 2;
	}
	logfd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (logfd < 0)
		return 4;
	mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shadow = calloc(npages, 1);
	if (mem == MAP_FAILED || !shadow) {
		logline("mmap failed\n");
		return 5;
	}
	madvise(mem, npages * PAGE, MADV_NOHUGEPAGE);
	srandom(getpid() ^ time(NULL));
	logline("Start %lu pages, pre %lu, pause %lu us\n", npages, pre / PAGE, pause_us);
	last_tick = now_ms();
	for (i = 0;; i++) {
		unsigned long pg = pre >= size && i < npages ? i : (unsigned long)random() % npages;
		unsigned char v = (unsigned char)(random() % 255 + 1);

		mem[pg * PAGE] = v;
		shadow[pg] = v;
		touches++;
		if (i < pre / PAGE)
			continue;
		if (now_ms() - last_tick >= 1000) {
			last_tick = now_ms();
			logline("tick %lld %lu\n", last_tick, touches);
			if (access("mem-touch-stop", F_OK) == 0)
				break;
		}
		if (pause_us)
			usleep(pause_us);
	}
	for (i = 0; i < npages; i++) {
		if (mem[i * PAGE] != shadow[i]) {
			if (bad < 100)
				logline("Mismatch %lu\n", i);
			bad++;
		}
	}
	logline("Finish %lu\n", bad);
	return bad ? 1 : 0;
}
