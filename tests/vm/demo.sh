#!/bin/sh
# The main job inside the VM: start agentcgd exactly as a user would, run
# processes that look like agents and their tools, and show what it did.
R=/sys/fs/cgroup/agentcg
echo "## agentcgd /sys/fs/cgroup/agentcg   (kernel $(uname -r), $(nproc) CPUs, sched_ext $(cat /sys/kernel/sched_ext/state))"
agentcgd /sys/fs/cgroup/agentcg > /tmp/agentcgd.log 2>&1 &
D=$!
i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i+1)); [ $i -gt 300 ] && break; usleep 100000; done
mkdir -p /tmp/agents
# Two busy "Claude Code" sessions (high) and two busy "Aider" sessions
# started with AGENTCG_PRIORITY=low (a user's per-launch choice; agents are
# session_high by default): four CPU hogs on two CPUs, so cpu.weight 150:50
# decides who runs.
printf '#!/bin/sh\n/tmp/agents/pytest &\nwhile :; do :; done\n' > /tmp/agents/claude
printf '#!/bin/sh\nwhile :; do :; done\n' > /tmp/agents/aider
printf '#!/bin/sh\nsleep 60\n' > /tmp/agents/pytest
chmod +x /tmp/agents/*
for a in claude claude; do /tmp/agents/$a & done
for a in aider aider; do AGENTCG_PRIORITY=low /tmp/agents/$a & done
usage() { awk '$1 == "usage_usec" { print $2 }' $R/$1/cpu.stat; }
sleep 2
h0=$(usage session_high); l0=$(usage session_low)
sleep 5
h1=$(usage session_high); l1=$(usage session_low)
# One leaf per agent instance: session_*/<family>-<pid>.
for f in $R/session_high/*/cgroup.procs $R/session_low/*/cgroup.procs; do
    [ -r $f ] || continue
    echo; echo "## cat ${f#$R/}"; cat $f
done
echo "## cpu.weight high/low: $(cat $R/session_high/cpu.weight) / $(cat $R/session_low/cpu.weight)"
awk -v h=$((h1 - h0)) -v l=$((l1 - l0)) 'BEGIN { printf "## CPU time over 5 s: session_high %.2f s, session_low %.2f s, ratio %.2f:1 (weights 3:1)\n", h/1e6, l/1e6, h/l }'
echo "## cat /sys/kernel/sched_ext/root/ops: $(cat /sys/kernel/sched_ext/root/ops 2>/dev/null)"
echo; echo "## agentcgd status"; agentcgd status
echo; echo "## agentcgd log"; cat /tmp/agentcgd.log
kill -TERM $D; wait $D
echo "## after SIGTERM: sched_ext $(cat /sys/kernel/sched_ext/state); processes stay: $(cat $R/session_high/*/cgroup.procs | wc -l) in session_high's leaves"
