/* LD_PRELOAD hook for agents that run no shell command without a login:
 * inside the agent's own process, wait for a trigger file and then fork
 * and exec `bash -c CMD` from it, as the agent spawns its tool runs, so
 * the test can check where such a child lands. Only the first process
 * that loads it acts (children inherit LD_PRELOAD and the marker). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static char trigger[4096];

static void *watch(void *arg)
{
	char cmd[4096];
	(void)arg;
	for (;;) {
		FILE *f = fopen(trigger, "r");
		if (f) {
			size_t n = fread(cmd, 1, sizeof(cmd) - 1, f);
			fclose(f);
			cmd[n] = 0;
			pid_t pid = fork();
			if (pid == 0) {
				unsetenv("LD_PRELOAD");
				execl("/bin/bash", "bash", "-c", cmd, (char *)NULL);
				_exit(127);
			}
			if (pid > 0)
				waitpid(pid, NULL, 0);
			return NULL;
		}
		usleep(200 * 1000);
	}
}

__attribute__((constructor)) static void start(void)
{
	const char *t = getenv("AGENTCG_TEST_SPAWN");
	const char *first = getenv("AGENTCG_TEST_SPAWN_PID");
	char me[32];
	pthread_t th;

	if (!t)
		return;
	snprintf(me, sizeof(me), "%d", (int)getpid());
	/* The first loader marks its pid; it keeps it across its execs (env,
	 * the #! interpreter, the agent), its children do not. */
	if (first && strcmp(first, me) != 0)
		return;
	setenv("AGENTCG_TEST_SPAWN_PID", me, 1);
	snprintf(trigger, sizeof(trigger), "%s", t);
	if (pthread_create(&th, NULL, watch, NULL) == 0)
		pthread_detach(th);
}
