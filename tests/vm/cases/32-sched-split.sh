#!/bin/sh
# 32-sched-split: with CPU hogs in two sibling cgroups, scx_agentcg splits
# the CPU by cpu.weight: 150:50 -> 3:1 and 100:100 -> 1:1, each within 5%
# (ratio of cgroup CPU time, cpu.stat usage_usec deltas); a task woken
# among the hogs preempts one.
. /vm/lib/sched.sh

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
echo +cpu > $CG/cgroup.subtree_control || fail "cannot enable the cpu controller"
mkdir -p $CG/t32
echo +cpu > $CG/t32/cgroup.subtree_control
mkdir -p $CG/t32/high $CG/t32/low
echo 150 > $CG/t32/high/cpu.weight
echo 50 > $CG/t32/low/cpu.weight

start_sched /tmp/scx32.log
echo "attached: $(cat $SX/root/ops), $NCPU CPUs, window ${WINDOW}s"

hogs t32/high $NCPU
hogs t32/low $NCPU
sleep $WARM
ratio t32/high t32/low 3 || { ok=1; }
[ "${ok:-0}" = 0 ] || fail "150:50 is not 3:1 within 5%"

# Woken while hogs hold every CPU, a task of a cgroup behind theirs
# preempts one (ops.select_cpu() puts it on that CPU's local DSQ) instead
# of waiting out a hog's slice: the preemption counter grows by at least
# half the measured wake-ups (the hogs alone add a few dozen a second).
mkdir -p $CG/t32/wake
p0=$(counter /tmp/scx32.log preempts)
sh -c "echo \$\$ > $CG/t32/wake/cgroup.procs; exec agentcg-schedbench wakeup 2 4" >/tmp/wake32.txt ||
    fail "wake-up workload failed"
sleep 2
p1=$(counter /tmp/scx32.log preempts)
echo "wake-ups among hogs (p50 p99 samples cycles burst, us): $(cat /tmp/wake32.txt); preempts ${p0:-?} -> ${p1:-?}"
n=$(awk '{ print $3 }' /tmp/wake32.txt)
[ -n "$p0" ] && [ -n "$p1" ] && [ "${n:-0}" -gt 0 ] || fail "no counters or no wake-ups measured"
[ $((p1 - p0)) -ge $((n / 2)) ] || fail "$((p1 - p0)) preemptions for $n wake-ups among hogs"

echo 100 > $CG/t32/high/cpu.weight
echo 100 > $CG/t32/low/cpu.weight
sleep 2
ratio t32/high t32/low 1 || fail "100:100 is not 1:1 within 5%"

kill -0 $SCHED 2>/dev/null || { cat /tmp/scx32.log; fail "scheduler exited"; }
[ "$(cat $SX/state)" = enabled ] || fail "state $(cat $SX/state)"
cleanup
echo "PASS 32-sched-split"
