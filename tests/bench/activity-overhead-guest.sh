#!/bin/sh
# Workload side of tests/bench/activity-overhead, run on the host and in
# the VM (POSIX sh, busybox). agentcg-bench-activity moves itself into a
# leaf cgroup and runs a context-switch-heavy workload (agentcg-schedbench)
# in chunks, switching the monitor's BPF backend between chunks: off
# (nothing watched: the program is detached), hook (only an empty program
# on sched_switch: the floor any program there costs), unwatched (watching another,
# empty leaf: what every task outside a watched leaf pays) and on (watching
# the workload's leaf). Modes rotate each round; the ratio is per round.
# Workloads: a one-byte pipe ping-pong pinned to one CPU (the densest
# stream of switches a task makes), the same with its two threads pinned
# to two CPUs (every round trip wakes the other CPU: perf bench sched
# pipe's cross-CPU path, without the unpinned pair's choice between the
# two shapes, which moves from chunk to chunk), the same unpinned, and the
# hackbench-like run (10 groups of 10 senders x 10 receivers). Then, with kernel.bpf_stats_enabled=1, the program's own cost
# per switch in each mode. kernel.bpf_stats_enabled is 0 for the timed
# chunks (its clock reads would be charged to the monitor) and restored at
# the end. Prints "BENCH ..." lines.
# Environment: BENCHACT, SCHEDBENCH (binaries), CGROOT (cgroup2 mount),
# ROUNDS (rounds of four chunks, 200), PIPE_N (round trips per chunk,
# 5000), PIPE2_N (the same across two CPUs, each trip 10-40x longer, 1000),
# HB_GROUPS (10), HB_LOOPS (messages per chunk, 100).
BA=${BENCHACT:-agentcg-bench-activity}
SB=${SCHEDBENCH:-agentcg-schedbench}
CGROOT=${CGROOT:-/sys/fs/cgroup}
ROUNDS=${ROUNDS:-200}
W=$CGROOT/agentcg-bench-activity-$$
STATS=/proc/sys/kernel/bpf_stats_enabled
old=$(cat $STATS)
finish() { echo "$old" > $STATS; rmdir $W/agent $W/other $W 2>/dev/null; }
trap finish EXIT
die() { echo "bench: $*"; exit 1; }
mkdir -p $W/agent $W/other || die "cannot create $W"
echo 0 > $STATS || die "cannot set kernel.bpf_stats_enabled"
echo "BENCH info kernel $(uname -r) cpus $(nproc) rounds $ROUNDS"
run() { # NAME CHUNKS BENCH-ARGS... -- WORKLOAD...: the binary's summary lines
    name=$1; chunks=$2; shift 2
    out=$($BA --leaf $W/agent --other $W/other --chunks $chunks "$@") || die "$name: $out"
    echo "$out" | awk -v n=$name '$1 == "BENCH" && $2 == "summary" { s[$3] = $4 }
        $1 == "BENCH" && $2 == "ratio" { r[$3] = $4 }
        $1 == "BENCH" && $2 == "prog" && n ~ /^stats-/ { print "BENCH prog", n, $3, $4, $5 }
        END { if (n !~ /^stats-/) for (m in s) print "BENCH result", n, m, s[m], r[m] }'
}
chunks=$((ROUNDS * 4))
pipe="$SB pipe ${PIPE_N:-5000}"
hb="$SB hackbench ${HB_GROUPS:-10} ${HB_LOOPS:-100}"
run pipe-1cpu $chunks --cpu 0 -- $pipe
[ "$(nproc)" -ge 2 ] && run pipe-2cpu $chunks -- $SB pipe ${PIPE2_N:-1000} 0 1
run pipe $chunks -- $pipe
run hackbench $chunks -- $hb
# The program's own cost per switch: run_time_ns / run_cnt with bpf_stats,
# every chunk in one mode; and its run time against the workload's CPU time.
echo 1 > $STATS || die "cannot enable kernel.bpf_stats_enabled"
for m in unwatched on; do
    u0=$(awk '$1 == "usage_usec" { print $2 }' $W/agent/cpu.stat)
    run stats-$m 6 --only $m --cpu 0 -- $pipe
    u1=$(awk '$1 == "usage_usec" { print $2 }' $W/agent/cpu.stat)
    echo "BENCH work stats-$m $((u1 - u0))"
done
echo "bench: done"
