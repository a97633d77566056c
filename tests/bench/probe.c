/* SPDX-License-Identifier: GPL-2.0 */
/*
 * agentcg-probe: the placement benchmark's probe, a small static C program
 * that reads /proc/self/cgroup from the first statement of main() until it
 * finds itself in the target cgroup, so nothing but the exec and libc's
 * static start-up lies between the kernel's exec event and the first look.
 *
 * argv: PROBE probe TARGET_REL SPAWN_NS TIMEOUT_MS ID (the protocol of
 * agentcg-bench-placement, which spawns it and reads one line per probe):
 *   "ID placed SPAWN_TO_PLACED_NS SPAWN_TO_MAIN_NS FIRST_CHECK(0|1)"
 *   "ID missed SPAWN_TO_MAIN_NS"
 * Between reads it sleeps 1/10 of the time waited so far (20 us .. 100 ms).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* Is the cgroup v2 line ("0::PATH") of /proc/self/cgroup want or a cgroup
 * below it (agentcgd's per-agent leaf, want/<family>-<pid>)? */
static int in_cgroup(int fd, const char *want, size_t want_len)
{
	char buf[4096];
	ssize_t n;
	char *p;

	if (lseek(fd, 0, SEEK_SET) < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, "0::", 3))
			continue;
		p += 3;
		return !strncmp(p, want, want_len) &&
		       (p[want_len] == '\n' || !p[want_len] || p[want_len] == '/');
	}
	return 0;
}

int main(int argc, char **argv)
{
	uint64_t t_main = mono_ns(), spawn_ns, deadline, now, waited, nap;
	char line[128];
	size_t want_len;
	int fd, first = 1, len;

	if (argc != 6 || strcmp(argv[1], "probe")) {
		fprintf(stderr, "usage: agentcg-probe probe TARGET_REL SPAWN_NS TIMEOUT_MS ID\n");
		return 2;
	}
	fd = open("/proc/self/cgroup", O_RDONLY);
	if (fd < 0)
		return 1;
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	want_len = strlen(argv[2]);
	spawn_ns = strtoull(argv[3], NULL, 10);
	deadline = t_main + strtoull(argv[4], NULL, 10) * 1000000ull;
	for (;;) {
		int placed = in_cgroup(fd, argv[2], want_len);

		now = mono_ns();
		if (placed) {
			len = snprintf(line, sizeof(line), "%s placed %llu %llu %d\n", argv[5],
				       (unsigned long long)(now - spawn_ns),
				       (unsigned long long)(t_main - spawn_ns), first);
			break;
		}
		if (now >= deadline) {
			len = snprintf(line, sizeof(line), "%s missed %llu\n", argv[5],
				       (unsigned long long)(t_main - spawn_ns));
			break;
		}
		first = 0;
		waited = now - t_main;
		nap = waited / 10;
		nap = nap < 20000 ? 20000 : nap > 100000000 ? 100000000 : nap;
		if (nap > deadline - now)
			nap = deadline - now;
		struct timespec ts = { (time_t)(nap / 1000000000ull), (long)(nap % 1000000000ull) };
		nanosleep(&ts, NULL);
	}
	/* One write: lines from concurrent probes must not interleave. */
	return write(1, line, len) == len ? 0 : 1;
}
