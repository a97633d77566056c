#!/bin/sh
# 37-sched-daemon: agentcgd loads the scheduler (state enabled, ops agentcg,
# `agentcgd status` says so), CPU hogs written into session_high and
# session_low split 3:1 (cpu.weight 150:50) within 5%, sysrq-S is reported
# and recovered from (restart, last exit sysrq), and SIGTERM leaves the
# kernel on its own scheduler (state disabled).
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

ROOT=$CG/agentcg
DAEMON=
stop_daemon() { [ -n "$DAEMON" ] && kill -TERM $DAEMON 2>/dev/null && wait $DAEMON 2>/dev/null; DAEMON=; }
fail() { echo "FAIL: $*"; [ -f /tmp/agentcgd37.log ] && tail -n 30 /tmp/agentcgd37.log; cleanup; stop_daemon; exit 1; }
status_json() { agentcgd status --json 2>/dev/null | tr -d '\n '; }

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
agentcgd $ROOT >/tmp/agentcgd37.log 2>&1 &
DAEMON=$!
wait_state enabled 30 || fail "agentcgd did not load the scheduler (state $(cat $SX/state))"
[ "$(cat $SX/root/ops)" = agentcg ] || fail "ops name $(cat $SX/root/ops)"
i=0; while ! status_json | grep -q '"backend":"sched_ext:agentcg"'; do
    i=$((i + 1)); [ $i -gt 50 ] && { agentcgd status; fail "status does not show sched_ext: agentcg"; }
    usleep 100000
done
agentcgd status | grep -i sched
for s in session_high session_low; do [ -d $ROOT/$s ] || fail "$ROOT/$s missing"; done
echo "weights: high $(cat $ROOT/session_high/cpu.weight) low $(cat $ROOT/session_low/cpu.weight)"

hogs agentcg/session_high $NCPU
hogs agentcg/session_low $NCPU
sleep $WARM
ratio agentcg/session_high agentcg/session_low 3 || fail "session_high:session_low is not 3:1 within 5%"

echo S > /proc/sysrq-trigger
wait_state disabled 10 || fail "state $(cat $SX/state) after sysrq-S"
echo "after sysrq-S: state $(cat $SX/state)"
wait_state enabled 30 || fail "agentcgd did not restart the scheduler after sysrq-S"
i=0; while ! status_json | grep -q '"kind":"sysrq"'; do
    i=$((i + 1)); [ $i -gt 50 ] && { agentcgd status --json; fail "status does not report the sysrq exit"; }
    usleep 100000
done
status_json | grep -q '"restarts":[1-9]' || { agentcgd status --json; fail "status does not count the restart"; }
echo "recovered: state $(cat $SX/state), $(status_json | grep -o '"restarts":[0-9]*')"

stop_daemon
wait_state disabled 5 || fail "state $(cat $SX/state) after SIGTERM of agentcgd"
echo "after SIGTERM: state $(cat $SX/state)"
cleanup
echo "PASS 37-sched-daemon"
