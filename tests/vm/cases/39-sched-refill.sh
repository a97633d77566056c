#!/bin/sh
# 39-sched-refill: cgroups emptied and refilled 10,000 times under load
# (N round trips, default 10000: 74 s of ping-pong under TCG on the shared
# development host, about 95 s with the boot).
# Two shells in t39/a and t39/b play ping-pong over two FIFOs: each blocks
# in turn, so each cgroup loses its last runnable task and gets one back on
# every round trip, while hogs keep all CPUs but one busy in t39/hog: a
# woken shell finds no idle CPU, goes through its cgroup's queue, and the
# CPU its partner leaves picks it from there (the retire/refill path on
# every round trip). The scheduler stays attached, its anomaly counters
# stay 0, the cgroups were activated at least N times and cgroups left the
# tree.
# Then cgroup churn past the scheduler's 16384 context slots: C (default
# 17000) cgroups made, entered by a shell, left and removed, so that freed
# slots are handed out again (agentcg-schedbench churn); two cgroups made after it (weights 300:100,
# in reused slots) still split the CPU 3:1.
. /vm/lib/sched.sh

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
N=${N:-10000}
echo +cpu > $CG/cgroup.subtree_control
mkdir -p $CG/t39 && echo +cpu > $CG/t39/cgroup.subtree_control
mkdir -p $CG/t39/a $CG/t39/b $CG/t39/hog
mkfifo /tmp/p1 /tmp/p2 || fail "mkfifo"

start_sched /tmp/scx39.log
hogs t39/hog $(($(nproc) - 1))
sleep 1
act0=$(counter /tmp/scx39.log activations); act0=${act0:-0}
retires0=$(counter /tmp/scx39.log retires); retires0=${retires0:-0}
start=$(awk '{ print int($1) }' /proc/uptime)
sh -c "echo \$\$ > $CG/t39/a/cgroup.procs; exec 3</tmp/p1 4>/tmp/p2; while read -r x <&3; do echo \$x >&4; done" &
HOGS="$HOGS $!"
sh -c "echo \$\$ > $CG/t39/b/cgroup.procs; exec 3>/tmp/p1 4</tmp/p2; i=0; while [ \$i -lt $N ]; do echo \$i >&3; read -r y <&4; i=\$((i + 1)); done" &
PP=$!
while kill -0 $PP 2>/dev/null; do
    sleep 1
    alive /tmp/scx39.log
done
wait $PP || fail "ping-pong failed"
echo "$N round trips in $(($(awk '{ print int($1) }' /proc/uptime) - start)) s"
no_anomalies /tmp/scx39.log
act=$(counter /tmp/scx39.log activations); ret=$(counter /tmp/scx39.log retires)
echo "activations: $act0 -> $act, retires: $retires0 -> $ret"
[ $((act - act0)) -ge $N ] || fail "fewer than $N cgroup activations: the cgroups were not emptied and refilled"
[ "$ret" -gt "${retires0:-0}" ] || fail "no cgroup left the tree: the retire path did not run"
for p in $HOGS; do kill -9 "$p" 2>/dev/null; done; HOGS=

C=${C:-17000}
secs=$(agentcg-schedbench churn $CG/t39 $C) || fail "cgroup churn failed"
echo "$C cgroups made, entered, left and removed in $secs s"
alive /tmp/scx39.log
mkdir -p $CG/t39/x $CG/t39/y
echo 300 > $CG/t39/x/cpu.weight
echo 100 > $CG/t39/y/cpu.weight
hogs t39/x $(nproc)
hogs t39/y $(nproc)
sleep $WARM
ratio t39/x t39/y 3 || fail "300:100 in cgroups made after the churn is not 3:1 within 5%"
no_anomalies /tmp/scx39.log
cleanup
echo "PASS 39-sched-refill"
