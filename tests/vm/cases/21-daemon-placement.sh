#!/bin/sh
# 21-daemon-placement: the daemon, started as users start it, builds
# agentcg/{session_high,session_low} with cpu and memory enabled and the
# weights set, places processes by the shipped policies (comm rules,
# descendants, tools) into their agent's leaf (session_high/<family>-<pid>,
# its tools in session_low/<family>-<pid>), leaves others alone, removes an
# agent's leaves once it has exited, and stops on SIGTERM in < 1 s; with
# cgroup2 remounted with memory_recursiveprot, a new leaf claims no
# memory.min/low (the kernel passes the session's protection down).
R=/sys/fs/cgroup/agentcg
W=/tmp/t21
mkdir -p $W/bin
D=
fail() { echo "FAIL: $*"; echo "--- agentcgd log"; cat $W/log 2>/dev/null | tail -30; [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1; }
cg() { sed -n 's/^0:://p' /proc/$1/cgroup; }
wait_cg() { # pid cgroup
    i=0; while [ "$(cg $1)" != "$2" ]; do i=$((i+1)); [ $i -gt 100 ] && return 1; usleep 20000; done; return 0; }

agentcgd check > $W/check.txt || fail "agentcgd check rejects the shipped policies: $(cat $W/check.txt)"
grep -q "claude-code -> session_high" $W/check.txt || fail "check output: $(cat $W/check.txt)"

# An agent that was running before the daemon: found by the start-up scan.
# (aider is session_high by default; AGENTCG_PRIORITY=low in its
# environment, as a user sets it per launch, sends it to session_low.)
printf '#!/bin/sh\nsleep 60\n' > $W/bin/aider; chmod +x $W/bin/aider
AGENTCG_PRIORITY=low $W/bin/aider & early=$!

agentcgd /sys/fs/cgroup/agentcg > $W/log 2>&1 & D=$!
i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i+1)); [ $i -gt 300 ] && fail "no state file"; usleep 100000; done

for s in session_high session_low; do
    [ -d $R/$s ] || fail "$R/$s missing"
    for c in cpu memory; do
        grep -qw $c $R/$s/cgroup.controllers || fail "$c not enabled for $s: $(cat $R/$s/cgroup.controllers)"
    done
done
[ "$(cat $R/session_high/cpu.weight)" = 150 ] || fail "session_high cpu.weight $(cat $R/session_high/cpu.weight)"
[ "$(cat $R/session_low/cpu.weight)" = 50 ] || fail "session_low cpu.weight $(cat $R/session_low/cpu.weight)"
echo "tree: $(cat $R/cgroup.subtree_control) weights 150/50"
# The sessions are parents of the agents' leaves: the controllers go down.
for s in session_high session_low; do
    for c in cpu memory; do
        grep -qw $c $R/$s/cgroup.subtree_control || fail "$c not enabled for the leaves of $s: $(cat $R/$s/cgroup.subtree_control)"
    done
done

wait_cg $early /agentcg/session_low/aider-$early || fail "pre-existing aider ($early) not placed in its leaf: $(cg $early)"

# Claude Code (comm rule, high) whose shell spawns a plain child (inherits)
# and a pytest (tools rule: low).
printf '#!/bin/sh\nsleep 30 &\nwait\n' > $W/bin/pytest; chmod +x $W/bin/pytest
printf '#!/bin/sh\nsleep 40 &\necho $! > %s/child\n%s/bin/pytest &\necho $! > %s/tool\nwait\n' $W $W $W > $W/bin/claude
chmod +x $W/bin/claude
$W/bin/claude & agent=$!
sleep 50 & other=$!
i=0; until [ -s $W/child ] && [ -s $W/tool ]; do i=$((i+1)); [ $i -gt 100 ] && fail "agent children not started"; usleep 20000; done
child=$(cat $W/child); tool=$(cat $W/tool)
A=claude-code-$agent
wait_cg $agent /agentcg/session_high/$A || fail "claude ($agent) in $(cg $agent)"
wait_cg $child /agentcg/session_high/$A || fail "claude's child ($child) in $(cg $child)"
wait_cg $tool /agentcg/session_low/$A || fail "claude's pytest ($tool) in $(cg $tool)"
# The tool's own children stay with the tool (session_low).
children() { for s in /proc/[0-9]*/stat; do set -- $(cat $s 2>/dev/null); [ "$4" = "$1" ] || [ "$4" != "$C" ] || echo $1; done; }
C=$tool; i=0; until [ -n "$(children)" ]; do i=$((i+1)); [ $i -gt 100 ] && fail "pytest has no child"; usleep 20000; done
tchild=$(children | head -1)
wait_cg $tchild /agentcg/session_low/$A || fail "pytest's child ($tchild) in $(cg $tchild)"
# A leaf takes its family's weight (100 unless the family file sets
# cpu_weight) and claims the session's memory protection (min/low max: the
# guest's cgroup2 is mounted without memory_recursiveprot).
for l in session_high/$A session_low/$A; do
    [ "$(cat $R/$l/cpu.weight)" = 100 ] || fail "$l cpu.weight $(cat $R/$l/cpu.weight)"
    [ "$(cat $R/$l/memory.min)/$(cat $R/$l/memory.low)" = max/max ] || fail "$l memory.min/low $(cat $R/$l/memory.min)/$(cat $R/$l/memory.low)"
done
echo "leaves: $(cd $R && ls -d session_*/*-* | tr '\n' ' ')"
usleep 300000
[ "$(cg $other)" = "/" ] || fail "unmatched sleep moved to $(cg $other)"
[ "$(cat /proc/$tool/oom_score_adj)" -gt "$(cat /proc/$agent/oom_score_adj)" ] || \
    echo "note: oom_score_adj high=$(cat /proc/$agent/oom_score_adj) low=$(cat /proc/$tool/oom_score_adj)"

usleep 400000
agentcgd status > $W/status.txt || fail "status failed"
cat $W/status.txt
grep -q "^  $A  *high+low .* /agentcg/session_high/$A /agentcg/session_low/$A\$" $W/status.txt || fail "status lacks agent $A in both sessions"
grep -q "^  aider-$early  *low " $W/status.txt || fail "status lacks agent aider-$early"
agentcgd explain $tool > $W/explain.txt; cat $W/explain.txt
grep -q "because tools rule 1" $W/explain.txt || fail "explain does not name the tools rule"

# The aider agent exits: its leaf goes (cgroup.events watched, no polling).
C=$early; kill $early $(children); wait $early 2>/dev/null
i=0; while [ -d $R/session_low/aider-$early ]; do i=$((i+1)); [ $i -gt 100 ] && fail "leaf aider-$early not removed after its agent exited"; usleep 20000; done
echo "empty leaf session_low/aider-$early removed within $((i * 20 + 20)) ms"

kill -TERM $D
n=0; while kill -0 $D 2>/dev/null && [ -d /proc/$D ] && ! grep -q '^State:.*Z' /proc/$D/status 2>/dev/null; do
    n=$((n+1)); [ $n -gt 100 ] && break; usleep 10000; done
wait $D; rc=$?; D=
[ $rc = 0 ] || fail "agentcgd exited $rc on SIGTERM"
echo "SIGTERM to exit: about $((n * 10)) ms"
[ $n -le 100 ] || fail "SIGTERM took more than 1 s"
[ "$(cg $agent)" = /agentcg/session_high/$A ] || fail "processes must stay where they are after stop: $(cg $agent)"
kill $agent $other 2>/dev/null

# With memory_recursiveprot (systemd mounts cgroup2 with it) the kernel
# hands a session's protection down to its leaves by usage: a new leaf
# claims none of its own.
mount -o remount,memory_recursiveprot /sys/fs/cgroup || fail "cannot remount cgroup2 with memory_recursiveprot"
grep -q " /sys/fs/cgroup cgroup2 .*memory_recursiveprot" /proc/mounts || fail "remount: $(grep cgroup2 /proc/mounts)"
mkdir -p $W/bin2
printf '#!/bin/sh\nsleep 30\n' > $W/bin2/claude; chmod +x $W/bin2/claude
agentcgd /sys/fs/cgroup/agentcg > $W/log 2>&1 & D=$!
i=0; until grep -q "memory protection: by the kernel" $W/log; do i=$((i+1)); [ $i -gt 300 ] && fail "no protection line in the log"; usleep 100000; done
$W/bin2/claude & agent=$!
A=claude-code-$agent
wait_cg $agent /agentcg/session_high/$A || fail "claude ($agent) in $(cg $agent) with memory_recursiveprot"
[ "$(cat $R/session_high/$A/memory.min)/$(cat $R/session_high/$A/memory.low)" = 0/0 ] || \
    fail "with memory_recursiveprot the leaf claims memory.min/low $(cat $R/session_high/$A/memory.min)/$(cat $R/session_high/$A/memory.low)"
echo "memory_recursiveprot: leaf $A placed, memory.min/low left to the kernel (0/0)"
kill -TERM $D; wait $D; rc=$?; D=
[ $rc = 0 ] || fail "agentcgd exited $rc on SIGTERM (memory_recursiveprot run)"
kill $agent 2>/dev/null
echo "PASS: tree built, weights set, placement by policy into the agents' leaves, empty leaf removed, clean stop, leaves under memory_recursiveprot"
