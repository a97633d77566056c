#!/bin/sh
# 34-sched-weight-change: a runtime cpu.weight change takes effect within a
# second: 100:100 runs 1:1; after high's weight goes to 300, the window that
# starts 1 s later runs 3:1 (within 5%).
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
kill -0 $SCHED 2>/dev/null || { cat /tmp/scx34.log; fail "scheduler exited"; }
cleanup
echo "PASS 34-sched-weight-change"
