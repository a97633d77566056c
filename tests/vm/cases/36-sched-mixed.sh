#!/bin/sh
# 36-sched-mixed: 30 s of mixed load under scx_agentcg ends without a stall
# or an error exit: hogs in weighted cgroups, tasks pinned to each CPU and
# to each half of the CPUs with taskset (a subset with VM_CPUS=4, run by
# hand: tests/vm/README.md), fork/exec churn, sleepers, cgroup moves and weight changes. Every
# task made progress, the scheduler is still attached at the end and its
# anomaly counters are 0.
. /vm/lib/sched.sh

# on failure, also show the kernel's sched_ext exit dump (where each task sat)
fail() { echo "FAIL: $*"; dmesg | sed -n '/sched_ext/,$p' | tail -n 150; cleanup; exit 1; }

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
DURATION=${DURATION:-30}
echo +cpu > $CG/cgroup.subtree_control
mkdir -p $CG/t36 && echo +cpu > $CG/t36/cgroup.subtree_control
mkdir -p $CG/t36/high $CG/t36/low $CG/t36/churn
echo 150 > $CG/t36/high/cpu.weight
echo 50 > $CG/t36/low/cpu.weight

start_sched /tmp/scx36.log

hogs t36/high $NCPU
hogs t36/low $NCPU
PINNED=
c=0
while [ $c -lt $NCPU ]; do
    taskset -c $c sh -c "echo \$\$ > $CG/t36/low/cgroup.procs; while :; do :; done" &
    PINNED="$PINNED $!"; HOGS="$HOGS $!"
    c=$((c + 1))
done
half=$((NCPU / 2))
taskset -c 0-$((half - 1)) sh -c "echo \$\$ > $CG/t36/high/cgroup.procs; while :; do :; done" &
PINNED="$PINNED $!"; HOGS="$HOGS $!"
taskset -c $half-$((NCPU - 1)) sh -c "echo \$\$ > $CG/t36/low/cgroup.procs; while :; do :; done" &
PINNED="$PINNED $!"; HOGS="$HOGS $!"
# fork/exec churn and sleepers
sh -c "echo \$\$ > $CG/t36/churn/cgroup.procs; while :; do /bin/true; cat /proc/loadavg >/dev/null; done" &
HOGS="$HOGS $!"
sh -c "echo \$\$ > $CG/t36/churn/cgroup.procs; while :; do usleep 2000; done" &
SLEEPER=$!; HOGS="$HOGS $!"
# a task moving between cgroups and weights changing
sh -c "while :; do :; done" &
MOVER=$!; HOGS="$HOGS $!"

t=0
while [ $t -lt $DURATION ]; do
    if [ $((t % 2)) = 0 ]; then echo $MOVER > $CG/t36/high/cgroup.procs; else echo $MOVER > $CG/t36/low/cgroup.procs; fi
    [ $((t % 10)) = 5 ] && echo $((100 + t * 3)) > $CG/t36/high/cpu.weight
    sleep 1
    t=$((t + 1))
    alive /tmp/scx36.log
done

kill -0 $SLEEPER || fail "sleeper died"
for p in $PINNED $MOVER; do
    tk=$(ticks $p)
    echo "pid $p ($(cat /proc/$p/status | awk '/Cpus_allowed_list/ { print $2 }')): $tk ticks"
    [ "$tk" -gt 0 ] || fail "task $p made no progress"
done
no_anomalies /tmp/scx36.log
cleanup
wait_state disabled 5 || fail "state not disabled after stopping"
echo "PASS 36-sched-mixed"
