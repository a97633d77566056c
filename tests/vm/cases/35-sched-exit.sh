#!/bin/sh
# 35-sched-exit: sysrq-S and killing the loader (SIGKILL) both return the
# kernel to its own scheduler (state disabled); after sysrq-S scx_agentcg
# reports the exit kind and reason and exits. An error exit (the kernel's
# stall watchdog, set below one slice with --watchdog-ms so that two busy
# tasks per CPU trip it) is reported with the kernel's debug dump: the
# error's backtrace and every CPU's state.
. /vm/lib/sched.sh


[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
echo +cpu > $CG/cgroup.subtree_control
mkdir -p $CG/t35 && echo +cpu > $CG/t35/cgroup.subtree_control && mkdir -p $CG/t35/a
hogs t35/a $NCPU

# sysrq-S
scx_agentcg >/tmp/scx35a.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx35a.log; fail "scheduler did not attach"; }
sleep 1
echo S > /proc/sysrq-trigger
wait_state disabled 10 || fail "state $(cat $SX/state) after sysrq-S, want disabled"
i=0; while kill -0 $SCHED 2>/dev/null; do i=$((i+1)); [ $i -gt 50 ] && fail "scx_agentcg still running after sysrq-S"; usleep 100000; done
wait $SCHED; rc=$?; SCHED=
cat /tmp/scx35a.log
grep -q "EXIT sysrq" /tmp/scx35a.log || fail "scx_agentcg did not report the sysrq exit"
echo "after sysrq-S: state $(cat $SX/state), scx_agentcg exit status $rc"

# SIGKILL of the loader
scx_agentcg >/tmp/scx35b.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx35b.log; fail "scheduler did not re-attach"; }
sleep 1
kill -9 $SCHED; wait $SCHED 2>/dev/null; SCHED=
wait_state disabled 10 || fail "state $(cat $SX/state) after SIGKILL of the loader, want disabled"
echo "after SIGKILL: state $(cat $SX/state)"

# an error exit: the stall watchdog (10 ms) against 20 ms slices
hogs t35/a $NCPU
scx_agentcg -s 20000 --watchdog-ms 10 >/tmp/scx35c.log 2>&1 &
SCHED=$!
i=0; while kill -0 $SCHED 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && { cat /tmp/scx35c.log; fail "no stall exit with --watchdog-ms 10"; }; usleep 100000; done
wait $SCHED; rc=$?; SCHED=
wait_state disabled 10 || fail "state $(cat $SX/state) after the stall exit, want disabled"
sed -n "/debug dump/,\$p" /tmp/scx35c.log | head -n 40
grep -q "EXIT stall" /tmp/scx35c.log || { cat /tmp/scx35c.log; fail "scx_agentcg did not report a stall exit"; }
[ $rc = 1 ] || fail "scx_agentcg exit status $rc after an error exit, want 1"
for want in "debug dump" "Backtrace" "CPU states"; do
    grep -q "$want" /tmp/scx35c.log || { cat /tmp/scx35c.log; fail "no '$want' in the report of the error exit"; }
done
echo "after the stall exit: state $(cat $SX/state), dump of $(wc -l < /tmp/scx35c.log) lines reported"
cleanup
echo "PASS 35-sched-exit"
