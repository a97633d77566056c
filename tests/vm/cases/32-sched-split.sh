#!/bin/sh
# 32-sched-split: with CPU hogs in two sibling cgroups, scx_agentcg splits
# the CPU by cpu.weight: 150:50 -> 3:1 and 100:100 -> 1:1, each within 5%
# (ratio of cgroup CPU time, cpu.stat usage_usec deltas).
. /vm/lib/sched.sh

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
echo +cpu > $CG/cgroup.subtree_control || fail "cannot enable the cpu controller"
mkdir -p $CG/t32
echo +cpu > $CG/t32/cgroup.subtree_control
mkdir -p $CG/t32/high $CG/t32/low
echo 150 > $CG/t32/high/cpu.weight
echo 50 > $CG/t32/low/cpu.weight

scx_agentcg -i 1 >/tmp/scx32.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx32.log; fail "scheduler did not attach"; }
echo "attached: $(cat $SX/root/ops), $NCPU CPUs, window ${WINDOW}s"

hogs t32/high $NCPU
hogs t32/low $NCPU
sleep $WARM
ratio t32/high t32/low 3 || { ok=1; }
[ "${ok:-0}" = 0 ] || fail "150:50 is not 3:1 within 5%"

echo 100 > $CG/t32/high/cpu.weight
echo 100 > $CG/t32/low/cpu.weight
sleep 2
ratio t32/high t32/low 1 || fail "100:100 is not 1:1 within 5%"

kill -0 $SCHED 2>/dev/null || { cat /tmp/scx32.log; fail "scheduler exited"; }
[ "$(cat $SX/state)" = enabled ] || fail "state $(cat $SX/state)"
cleanup
echo "PASS 32-sched-split"
