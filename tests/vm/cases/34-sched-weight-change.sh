#!/bin/sh
# 34-sched-weight-change: a runtime cpu.weight change takes effect within a
# second: 100:100 runs 1:1; after high's weight goes to 300, the window that
# starts 1 s later runs 3:1 (within 5%). Then a share that could not be used
# is not owed: high (300) with one hog gets one CPU (its share capped by its
# tasks) for a window; once it has a hog per CPU again, it runs 3:1 from
# that moment, not high alone catching up (which, without the active credit
# cap, took both CPUs for about 8 s).
. /vm/lib/sched.sh


[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
WINDOW=${WINDOW:-5}
echo +cpu > $CG/cgroup.subtree_control || fail "cannot enable the cpu controller"
mkdir -p $CG/t34 && echo +cpu > $CG/t34/cgroup.subtree_control
mkdir -p $CG/t34/high $CG/t34/low
echo 100 > $CG/t34/high/cpu.weight
echo 100 > $CG/t34/low/cpu.weight

scx_agentcg -i 1 >/tmp/scx34.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx34.log; fail "scheduler did not attach"; }
hogs t34/high $NCPU
hogs t34/low $NCPU
sleep $WARM
ratio t34/high t34/low 1 || fail "100:100 is not 1:1 within 5% before the change"
echo 300 > $CG/t34/high/cpu.weight
echo "high: cpu.weight 100 -> 300"
sleep 1
ratio t34/high t34/low 3 || fail "the 300:100 split (3:1) did not take effect within 1 s"

for p in $HOGS; do kill -9 "$p" 2>/dev/null; done
HOGS=
hogs t34/low $NCPU
hogs t34/high 1
sleep 1
ratio t34/high t34/low $(awk -v n=$NCPU 'BEGIN { print 1 / (n - 1) }') ||
    fail "high with one hog does not get one CPU"
# counted from before the new hogs: a catch-up would take both CPUs, the
# shell running this case too, so a window started after it would miss it
h0=$(usage t34/high); l0=$(usage t34/low)
hogs t34/high $((NCPU - 1))
echo "high: 1 -> $NCPU hogs"
ratio_since t34/high t34/low 3 $h0 $l0 ||
    fail "after a window held to one CPU, high does not run 3:1 from the moment it has the tasks for it"
kill -0 $SCHED 2>/dev/null || { cat /tmp/scx34.log; fail "scheduler exited"; }
cleanup
echo "PASS 34-sched-weight-change"
