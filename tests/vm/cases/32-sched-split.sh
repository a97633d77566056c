#!/bin/sh
# 32-sched-split: with CPU hogs in two sibling cgroups, scx_agentcg splits
# the CPU by cpu.weight: 150:50 -> 3:1 and 100:100 -> 1:1, each within 5%
# (ratio of cgroup CPU time, cpu.stat usage_usec deltas).
CG=/sys/fs/cgroup
SX=/sys/kernel/sched_ext
SCHED=
HOGS=
WARM=${WARM:-3}
WINDOW=${WINDOW:-8}
TOL=${TOL:-0.05}
fail() { echo "FAIL: $*"; cleanup; exit 1; }
cleanup() {
    for p in $HOGS; do kill -9 "$p" 2>/dev/null; done
    HOGS=
    [ -n "$SCHED" ] && kill "$SCHED" 2>/dev/null && wait "$SCHED" 2>/dev/null
    SCHED=
}
wait_state() {
    i=0
    while [ "$(cat $SX/state 2>/dev/null)" != "$1" ]; do
        i=$((i + 1)); [ $i -gt $(($2 * 10)) ] && return 1
        usleep 100000
    done
}
hogs() { # CGROUP N: N busy loops in CGROUP
    n=0
    while [ $n -lt $2 ]; do
        sh -c "echo \$\$ > $CG/$1/cgroup.procs; while :; do :; done" &
        HOGS="$HOGS $!"
        n=$((n + 1))
    done
}
usage() { awk '$1 == "usage_usec" { print $2 }' $CG/$1/cpu.stat; }
# ratio A B TARGET: measure A:B usage over WINDOW s, check within TOL of TARGET
ratio() {
    a0=$(usage $1); b0=$(usage $2)
    sleep $WINDOW
    a1=$(usage $1); b1=$(usage $2)
    awk -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v t=$3 -v tol=$TOL -v n="$1:$2" 'BEGIN {
        if (b <= 0) { printf "%s: no CPU time for the second cgroup\n", n; exit 1 }
        r = a / b; dev = (r - t) / t; if (dev < 0) dev = -dev
        printf "%-28s cpu_ms %d:%d ratio %.3f target %.3f deviation %.2f%%\n", n, a / 1000, b / 1000, r, t, dev * 100
        exit (dev <= tol) ? 0 : 1 }'
}

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
