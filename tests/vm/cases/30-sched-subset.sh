#!/bin/sh
# vm-env: VM_CPUS=4
# 30-sched-subset: tasks allowed on a subset of the CPUs (two of four) stay
# in their cgroup's queue (`subset`), and a CPU that finds none it may run
# in the first cgroup passes over it (`skips`). Fair is max-min fair, as in
# case 38 (docs/scheduler.md).
#  1. high (150) free, low (50) on CPUs 2-3 by cpuset.cpus: 3:1 (low's
#     share, one CPU, fits in its two).
#  2. weights swapped: low (150) is capped at its two CPUs, high gets the
#     other two: 1:1.
#  3. then a hog of high allowed on CPUs 2-3 only (taskset): low is below
#     high in cgroup vtime order for good there, so only the subset aging
#     serves it (`subset_aged`): without it the hog never runs and the
#     kernel's watchdog ends the scheduler after 30 s.
#  4. both sessions on CPUs 2-3 (the pinned hog gone), weights 150:50 again:
#     weight-fair on the CPUs they share, 3:1, while CPUs 0-1 pass over both.
#  5. low (150) split into 6 agent leaves with a hog each, still on CPUs 2-3,
#     high (50) free with 4 hogs: low is capped at its two CPUs, so its
#     leaves often lead the tree, and CPUs 0-1 pass over all 6 to reach
#     high: 1:1, and every hog of high runs. A dispatch that runs out of room
#     to pass over cgroups counts an anomaly (`skip_budget`): with room for
#     4 this part counted 4 in 8 s.
# The anomaly counters stay 0 and the scheduler stays attached.
. /vm/lib/sched.sh
fail() { echo "FAIL: $*"; dmesg | sed -n '/sched_ext/,$p' | tail -n 80; cleanup; exit 1; }

[ "$(nproc)" -ge 4 ] || fail "needs 4 CPUs (vm-env VM_CPUS=4), has $(nproc)"
cpuset_sessions t30 2-3

start_sched /tmp/scx30.log
hogs t30/high 4
hogs t30/low 4
sleep $WARM
ratio t30/high t30/low 3 || fail "150:50 with low on two of four CPUs is not 3:1 within 5%"
subset=$(counter /tmp/scx30.log subset)
skips=$(counter /tmp/scx30.log skips)
echo "after part 1: subset $subset, skips $skips"
[ "${subset:-0}" -gt 0 ] || fail "no task was queued as allowed on a subset of the CPUs"
[ "${skips:-0}" -gt 0 ] || fail "no CPU passed over low's queue: the test did not reach the path it is for"

echo 50 > $CG/t30/high/cpu.weight
echo 150 > $CG/t30/low/cpu.weight
sleep 1
ratio t30/high t30/low 1 || fail "50:150 with the 150 side capped at two CPUs is not 1:1 within 5%"

aged=$(counter /tmp/scx30.log subset_aged)
taskset -c 2,3 sh -c "echo \$\$ > $CG/t30/high/cgroup.procs; while :; do :; done" &
PINNED=$!; HOGS="$HOGS $!"
t0=$(ticks $PINNED)
sleep $WINDOW
t1=$(ticks $PINNED)
echo "high's hog on CPUs 2-3: $((t1 - t0)) ticks in ${WINDOW}s"
[ $((t1 - t0)) -gt 0 ] || fail "the hog of high allowed on CPUs 2-3 made no progress"
[ "$(counter /tmp/scx30.log subset_aged)" -gt "${aged:-0}" ] || fail "subset_aged did not move: the hog got CPU another way"

kill -9 $PINNED
echo 2-3 > $CG/t30/high/cpuset.cpus || fail "cannot confine high to CPUs 2-3"
echo 150 > $CG/t30/high/cpu.weight
echo 50 > $CG/t30/low/cpu.weight
sleep 1
ratio t30/high t30/low 3 || fail "150:50 with both on CPUs 2-3 is not 3:1 within 5%"

for p in $HOGS; do kill -9 "$p" 2>/dev/null; done
HOGS=
sleep 1
echo 0-3 > $CG/t30/high/cpuset.cpus || fail "cannot free high"
echo 50 > $CG/t30/high/cpu.weight
echo 150 > $CG/t30/low/cpu.weight
echo +cpu > $CG/t30/low/cgroup.subtree_control || fail "cannot enable cpu in low for its leaves"
for i in 1 2 3 4 5 6; do leaf t30/low/a$i; hogs t30/low/a$i 1; done
LOW_HOGS=$HOGS
hogs t30/high 4
HIGH_HOGS=${HOGS#"$LOW_HOGS"}
sleep $WARM
for p in $HIGH_HOGS; do eval "t0_$p=$(ticks $p)"; done
ratio t30/high t30/low 1 || fail "high (50) free and low (150) in 6 leaves on CPUs 2-3 is not 1:1 within 5%"
# each of high's hogs: half a CPU, 50 ticks a second; a fifth of that is the floor
for p in $HIGH_HOGS; do
    eval "t0=\$t0_$p"; t=$(($(ticks $p) - t0))
    echo "high's hog $p: $t ticks in ${WINDOW}s"
    [ $t -gt $((WINDOW * 10)) ] || fail "a hog of high got $t ticks in ${WINDOW}s, under a fifth of its share"
done
no_anomalies /tmp/scx30.log
cleanup
echo "PASS 30-sched-subset"
