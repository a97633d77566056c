#!/bin/sh
# 38-sched-cpuset: one session confined to one CPU by cpuset.cpus, the other
# free. Fair here means max-min fair: each cgroup gets its weighted share of
# the machine, capped at what its CPUs can hold, and what a capped cgroup
# cannot use goes to the others (docs/scheduler.md).
#  1. high (150) free, low (50) on CPU 1: shares 1.5 and 0.5 CPUs: 3:1.
#  2. weights swapped (low 150 on CPU 1 is capped at one CPU: 1:1, less
#     the slices the aging below gives high's pinned hog on CPU 1), and a
#     hog of high pinned to CPU 1 with taskset still makes progress (it is
#     below low in cgroup vtime order forever; only the single-CPU aging
#     serves it: the test that shows the aging is needed). The ratio is
#     checked against what the pinned hog measurably got, and that grant
#     on its own: more than nothing, at most an eighth of CPU 1.
# The anomaly counters stay 0 and the scheduler stays attached.
. /vm/lib/sched.sh

[ "$(nproc)" -ge 2 ] || fail "needs 2 CPUs"
cpuset_sessions t38 1

start_sched /tmp/scx38.log
hogs t38/high 2
hogs t38/low 2
sleep $WARM
ratio t38/high t38/low 3 || fail "150:50 with low on one CPU is not 3:1 within 5%"
aged=$(counter /tmp/scx38.log pcpu_aged)
echo "pcpu_aged after part 1: $aged"

echo 50 > $CG/t38/high/cpu.weight
echo 150 > $CG/t38/low/cpu.weight
taskset -c 1 sh -c "echo \$\$ > $CG/t38/high/cgroup.procs; while :; do :; done" &
PINNED=$!; HOGS="$HOGS $!"
sleep 2
# Max-min fair is 1:1, less what the aging gives the pinned hog: a slice
# after every 25 (STARVE_SLICES) it waited. A 5 ms slice ends at a tick
# (4 ms here), so it runs 5-8 ms: about 1/20 of CPU 1, taken from low and
# added to high. What it got varies (0.48-0.67 s in 8 s in one boot), so
# the target is computed from its measured time p (ticks of 10 ms) and
# each CPU's time c = (low + high) / 2: (c - p):(c + p).
t0=$(ticks $PINNED); a0=$(usage t38/low); b0=$(usage t38/high)
sleep $WINDOW
t1=$(ticks $PINNED); a1=$(usage t38/low); b1=$(usage t38/high)
awk -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v p=$(((t1 - t0) * 10000)) -v tol=$TOL 'BEGIN {
    c = (a + b) / 2; t = (c - p) / (c + p); r = a / b; dev = (r - t) / t; if (dev < 0) dev = -dev
    printf "t38/low:t38/high             cpu_ms %d:%d ratio %.3f target %.3f deviation %.2f%% (pinned hog %d ms, %.1f%% of a CPU)\n", a / 1000, b / 1000, r, t, dev * 100, p / 1000, p / c * 100
    exit (dev <= tol) ? 0 : 1 }' || fail "150:50 with the 150 side capped at one CPU is not 1:1 (less the pinned hog's aging) within 5%"
echo "high's hog pinned to CPU 1: $((t1 - t0)) ticks in ${WINDOW}s"
[ $((t1 - t0)) -gt 0 ] || fail "the pinned hog of high made no progress"
[ $(((t1 - t0) * 8)) -le $((WINDOW * 100)) ] || fail "the aging gave the pinned hog more than an eighth of CPU 1"
[ "$(counter /tmp/scx38.log pcpu_aged)" -gt "${aged:-0}" ] || fail "pcpu_aged did not move: the pinned hog got CPU another way"
no_anomalies /tmp/scx38.log
cleanup
echo "PASS 38-sched-cpuset"
