#!/bin/sh
# Workload side of tests/bench/activity-overhead, run on the host and in
# the VM (POSIX sh, busybox). Context-switch-heavy workloads in a leaf
# cgroup (agentcg-schedbench: a one-byte pipe ping-pong and the
# hackbench-like run, 10 groups of 10 senders x 10 receivers), each timed
# with the monitor off; loaded but watching nothing (the hooks alone); on
# but watching another leaf (what every other task of the host pays); and
# on, watching that leaf. Modes rotate each round. Then, with
# kernel.bpf_stats_enabled=1, one run of both workloads per monitor mode
# for the programs' own cost per event. Prints "BENCH ..." lines.
# Environment: SCHEDBENCH, ACTIVITY (binaries), CGROOT (cgroup2 mount),
# ROUNDS (5), PIPE_N (200000), HB_GROUPS (10), HB_LOOPS (1000).
SB=${SCHEDBENCH:-agentcg-schedbench}
ACT=${ACTIVITY:-agentcg-activity}
CGROOT=${CGROOT:-/sys/fs/cgroup}
ROUNDS=${ROUNDS:-5}
W=$CGROOT/agentcg-bench-activity-$$
MON=
OUT=/tmp/activity-bench-mon.$$
die() { echo "bench: $*"; stop_mon; rmdir $W/agent $W/other $W 2>/dev/null; exit 1; }
start_mon() { # [LEAF]: the monitor (BPF) watching $W/LEAF (or nothing), once ready
    : > $OUT    # truncated here: the child's own redirection may come late
    $ACT watch --backend bpf ${1:+$W/$1} >> $OUT 2>&1 &
    MON=$!
    i=0
    until grep -q '^ready' $OUT; do
        i=$((i + 1)); [ $i -gt 100 ] && { cat $OUT; die "the monitor did not start"; }
        kill -0 $MON 2>/dev/null || { cat $OUT; die "the monitor exited"; }
        sleep 0.1
    done
    grep -q '^backend bpf' $OUT || { cat $OUT; die "the monitor's backend is not bpf"; }
}
stop_mon() { [ -n "$MON" ] && kill -TERM $MON 2>/dev/null && wait $MON 2>/dev/null; MON=; }
wl() { # WORKLOAD: seconds, run inside $W/agent
    case $1 in
        pipe) set -- pipe ${PIPE_N:-200000} ;;
        hackbench) set -- hackbench ${HB_GROUPS:-10} ${HB_LOOPS:-1000} ;;
    esac
    sh -c "echo \$\$ > $W/agent/cgroup.procs && exec $SB $*"
}
measure() { # MODE WORKLOAD
    case $1 in
        on) start_mon agent ;;
        unwatched) start_mon other ;;
        loaded) start_mon ;;
    esac
    t=$(wl $2) || die "workload $2 failed"
    stop_mon
    echo "BENCH run $1 $2 $t"
}
mkdir -p $W/agent $W/other || die "cannot create $W"
echo "BENCH info kernel $(uname -r) cpus $(nproc) rounds $ROUNDS"
r=0
while [ $r -lt $ROUNDS ]; do
    case $((r % 4)) in
        0) modes="off loaded unwatched on" ;;
        1) modes="on off loaded unwatched" ;;
        2) modes="unwatched on off loaded" ;;
        3) modes="loaded unwatched on off" ;;
    esac
    for w in pipe hackbench; do
        for m in $modes; do measure $m $w; done
    done
    r=$((r + 1))
done
# The programs' own cost: run_time_ns / run_cnt with bpf_stats_enabled,
# for each mode (loaded: the hook and one load; unwatched: the lookups every
# task pays; on: the watched leaf's accounting).
old=$(cat /proc/sys/kernel/bpf_stats_enabled)
echo 1 > /proc/sys/kernel/bpf_stats_enabled || die "cannot enable kernel.bpf_stats_enabled"
for m in loaded unwatched on; do
    case $m in on) start_mon agent ;; unwatched) start_mon other ;; loaded) start_mon ;; esac
    t0=$(cut -d' ' -f1 /proc/uptime)
    u0=$(awk '$1 == "usage_usec" { print $2 }' $W/agent/cpu.stat)
    for w in pipe hackbench; do t=$(wl $w) || die "workload $w failed"; echo "BENCH stats-run $m $w $t"; done
    u1=$(awk '$1 == "usage_usec" { print $2 }' $W/agent/cpu.stat)
    t1=$(cut -d' ' -f1 /proc/uptime)
    stop_mon
    echo "BENCH work $m $((u1 - u0))"
    awk -v m=$m -v t0=$t0 -v t1=$t1 '$1 == "prog" { print "BENCH prog", m, $2, $4, $6, t1 - t0 }' $OUT
done
echo $old > /proc/sys/kernel/bpf_stats_enabled
rm -f $OUT
rmdir $W/agent $W/other $W
echo "bench: done"
