#!/bin/sh
# 62-accounting-cgroup: the accounting sampler's kernel-first path on a
# kernel with the cpu, memory and pids controllers on (the development
# host has neither cpu nor memory in its cgroup2): a process holding 48 MB
# in a real leaf is counted from memory.current/memory.peak (source
# "cgroup"), its CPU from cpu.stat; a process the kernel OOM-kills in
# another leaf shows in that leaf's oom_kills (memory.events).
# vm-env: VM_MEM_MB=1024
CG=/sys/fs/cgroup
T=$CG/t61
W=/tmp/t61
mkdir -p $W
fail() { echo "FAIL: $*"; exit 1; }
num() { sed -n "s/.*\"$1\":\([0-9][0-9]*\).*/\1/p" "$2"; }

for c in cpu memory pids; do
    grep -qw $c $CG/cgroup.controllers || { echo "SKIP: no $c controller in this kernel's cgroup2"; exit 0; }
done
echo "+cpu +memory +pids" > $CG/cgroup.subtree_control || fail "root subtree_control"
mkdir -p $T/session_high
echo "+cpu +memory +pids" > $T/cgroup.subtree_control || fail "t61 subtree_control"
echo "+cpu +memory +pids" > $T/session_high/cgroup.subtree_control || fail "session_high subtree_control"
A=$T/session_high/agent-1
B=$T/session_high/agent-2
mkdir -p $A $B

# agent-1: 48 MB held (agentcg-replay follows a memory trace; killed below).
printf 't_s,mem_mb\n0,48\n60,49\n' > $W/hold.csv
sh -c "echo \$\$ > $A/cgroup.procs; exec agentcg-replay --trace $W/hold.csv --speed 1" > $W/hold.out 2>&1 &
h=$!
i=0; until [ "$(cat $A/memory.current)" -ge 45000000 ]; do
    i=$((i+1)); [ $i -gt 300 ] && fail "replay never reached 45 MB: $(cat $W/hold.out)"; usleep 100000; done
agentcg-bench-accounting sample $A > $W/a.json || fail "sample failed: $(cat $W/a.json)"
echo "agent-1: $(cat $W/a.json)"
grep -q '"memory":"cgroup"' $W/a.json || fail "memory not from the cgroup"
grep -q '"cpu":"cgroup"' $W/a.json || fail "cpu not from the cgroup"
grep -q '"oom_kills":"cgroup"' $W/a.json || fail "oom_kills not from memory.events"
mem=$(num memory_bytes $W/a.json)
peak=$(num memory_peak_bytes $W/a.json)
[ "$mem" -ge 45000000 ] || fail "memory_bytes $mem < 45 MB for a 48 MB process ($(cat $W/hold.out))"
[ "$peak" -ge "$mem" ] || fail "memory_peak_bytes $peak < memory_bytes $mem"
[ "$(num oom_kills $W/a.json)" = 0 ] || fail "oom_kills not 0 in agent-1"
[ "$(num processes $W/a.json)" -ge 1 ] || fail "no process counted"
kill $h 2>/dev/null; wait $h

# agent-2: memory.max 32 MB, asks for 100 MB: the kernel kills it.
echo 32M > $B/memory.max
printf 't_s,mem_mb\n0,10\n0.5,100\n2,100\n' > $W/big.csv
sh -c "echo \$\$ > $B/cgroup.procs; exec agentcg-replay --trace $W/big.csv --speed 1" > $W/big.out 2>&1
rc=$?
[ $rc = 137 ] || fail "the 100 MB replay was not OOM-killed (rc $rc)"
agentcg-bench-accounting sample $B > $W/b.json || fail "sample failed"
echo "agent-2: $(cat $W/b.json)"
[ "$(num oom_kills $W/b.json)" -ge 1 ] || fail "oom_kills of agent-2 not counted"
peak=$(num memory_peak_bytes $W/b.json)
[ "$peak" -ge 30000000 ] || fail "memory_peak_bytes $peak below the 32 MB limit it hit"
rmdir $A $B $T/session_high $T
echo "PASS: memory/peak/cpu from the leaf's files, OOM kill counted from memory.events"
