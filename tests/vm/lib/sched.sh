# Shell helpers for the scheduler guest cases (tests/vm/cases/3*-sched-*.sh):
# sourced as `. /vm/lib/sched.sh`. A case may redefine fail/cleanup after.
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
mkcg() { # PATH WEIGHT: create under an existing parent, cpu enabled there
    parent=${1%/*}
    [ "$parent" = "$1" ] && parent=.
    [ -d $CG/$parent ] || fail "mkcg $1: create $parent first"
    echo +cpu > $CG/$parent/cgroup.subtree_control || fail "cannot enable cpu in $parent"
    mkdir -p $CG/$1 && echo $2 > $CG/$1/cpu.weight || fail "cannot set $1 cpu.weight"
}
# leaf CGROUP: a leaf cgroup made the way agentcgd makes an agent's leaf
# (a session enables controllers for its leaves, so nothing can be written
# into the session itself): mkdir, memory.min/low "max" so that it claims
# the session's memory protection (no memory_recursiveprot in the guest).
leaf() {
    mkdir -p $CG/$1 || fail "cannot create $CG/$1"
    for f in memory.min memory.low; do
        [ -e $CG/$1/$f ] && { echo max > $CG/$1/$f || fail "cannot set $1/$f"; }
    done
}
usage() { awk '$1 == "usage_usec" { print $2 }' $CG/$1/cpu.stat; }
# ticks PID: user + system clock ticks PID has run (0 once it is gone)
ticks() { awk '{ print $14 + $15 }' /proc/$1/stat 2>/dev/null || echo 0; }
# cpuset_sessions T CPUS: $CG/T/high (150) and $CG/T/low (50) with cpu and
# cpuset enabled, low confined to CPUS by cpuset.cpus (cases 30 and 38)
cpuset_sessions() {
    [ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
    grep -qw cpuset $CG/cgroup.controllers || fail "no cpuset controller"
    echo "+cpu +cpuset" > $CG/cgroup.subtree_control || fail "cannot enable cpu and cpuset"
    mkdir -p $CG/$1 && echo "+cpu +cpuset" > $CG/$1/cgroup.subtree_control
    mkdir -p $CG/$1/high $CG/$1/low
    echo 150 > $CG/$1/high/cpu.weight
    echo 50 > $CG/$1/low/cpu.weight
    echo $2 > $CG/$1/low/cpuset.cpus || fail "cannot confine low to CPUs $2"
    echo "low: cpuset.cpus.effective $(cat $CG/$1/low/cpuset.cpus.effective)"
}
# ratio A B TARGET: measure A:B usage over WINDOW s, check within TOL of TARGET
ratio() { ratio_since $1 $2 $3 $(usage $1) $(usage $2); }
# ratio_since A B TARGET A0 B0: the same from usages A0 and B0 read earlier,
# WINDOW s from now (what ran in between counts: a catch-up that starves
# the shell running the case is not missed)
ratio_since() {
    sleep $WINDOW
    a1=$(usage $1); b1=$(usage $2)
    awk -v a=$((a1 - $4)) -v b=$((b1 - $5)) -v t=$3 -v tol=$TOL -v n="$1:$2" 'BEGIN {
        if (b <= 0) { printf "%s: no CPU time for the second cgroup\n", n; exit 1 }
        r = a / b; dev = (r - t) / t; if (dev < 0) dev = -dev
        printf "%-28s cpu_ms %d:%d ratio %.3f target %.3f deviation %.2f%%\n", n, a / 1000, b / 1000, r, t, dev * 100
        exit (dev <= tol) ? 0 : 1 }'
}
# start_sched LOG: scx_agentcg with JSON statistics every second into LOG
start_sched() {
    scx_agentcg -i 1 --stats --json >"$1" 2>&1 &
    SCHED=$!
    wait_state enabled 30 || { cat "$1"; fail "scheduler did not attach"; }
}
# daemon_log LOG [N]: agentcgd's log for a failure report: the kernel's
# debug dump of a scheduler error exit, where the daemon logged one (what
# each CPU ran when a stall or lockup took the scheduler down), then the
# last N (20) lines without DEBUG and dump lines.
daemon_log() {
    grep 'sched_ext dump:' "$1" 2>/dev/null
    grep -v -e DEBUG -e 'sched_ext dump:' "$1" 2>/dev/null | tail -n "${2:-20}"
}
# counter LOG NAME: the latest value of global counter NAME in LOG
counter() { grep -o "\"$2\":[0-9]*" "$1" | tail -n 1 | cut -d: -f2; }
# alive LOG: the scheduler still runs and sched_ext is still enabled
alive() {
    kill -0 "$SCHED" 2>/dev/null || { grep -v '^{' "$1"; fail "scheduler exited: $(grep EXIT "$1")"; }
    [ "$(cat $SX/state)" = enabled ] || fail "sched_ext state $(cat $SX/state)"
}
# no_anomalies LOG: the anomaly counters (statistics sum "anomalies") are 0
# and the scheduler did not exit; waits for one more statistics line first
no_anomalies() {
    n=$(grep -c '^{' "$1"); i=0
    while [ "$(grep -c '^{' "$1")" -le "$n" ] && [ $i -lt 30 ]; do usleep 100000; i=$((i + 1)); done
    alive "$1"
    a=$(counter "$1" anomalies)
    [ -n "$a" ] || fail "no statistics in $1"
    echo "anomalies: $a ($(grep -o '"counters":{[^}]*}' "$1" | tail -n 1))"
    [ "$a" = 0 ] || fail "anomaly counters are not 0"
}
