#!/bin/sh
# The main job inside the VM: start agentcgd exactly as a user would, run a
# few processes that look like agents and their tools, and show what it did.
R=/sys/fs/cgroup/agentcg
echo "## agentcgd /sys/fs/cgroup/agentcg   (kernel $(uname -r), sched_ext $(cat /sys/kernel/sched_ext/state))"
agentcgd /sys/fs/cgroup/agentcg > /tmp/agentcgd.log 2>&1 &
D=$!
i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i+1)); [ $i -gt 300 ] && break; usleep 100000; done
mkdir -p /tmp/agents
printf '#!/bin/sh\nwhile :; do :; done\n' > /tmp/agents/claude
printf '#!/bin/sh\nwhile :; do :; done\n' > /tmp/agents/aider
printf '#!/bin/sh\nsleep 60\n' > /tmp/agents/pytest
chmod +x /tmp/agents/*
/tmp/agents/claude & /tmp/agents/aider & /tmp/agents/pytest &
sleep 4
echo; echo "## cat $R/session_high/cgroup.procs"; cat $R/session_high/cgroup.procs
echo "## cat $R/session_low/cgroup.procs"; cat $R/session_low/cgroup.procs
echo "## cpu.weight high/low: $(cat $R/session_high/cpu.weight) / $(cat $R/session_low/cpu.weight)"
echo "## cat /sys/kernel/sched_ext/root/ops: $(cat /sys/kernel/sched_ext/root/ops 2>/dev/null)"
echo; echo "## agentcgd status"; agentcgd status
echo; echo "## agentcgd log"; cat /tmp/agentcgd.log
kill -TERM $D; wait $D
echo "## after SIGTERM: sched_ext $(cat /sys/kernel/sched_ext/state)"
