#!/bin/sh
# Guest side of tests/bench/sched-wakeup-trace: the wake-up latency workload
# traced under each scheduler; each trace goes to the console gzipped and
# base64-encoded between "=== TRACE <label>" and "=== END <label>".
WITH_HOGS=${HOGS:-0}	# the helpers below keep their hogs' PIDs in HOGS
. /vm/lib/sched.sh
ROUNDS=${ROUNDS:-2}
SECS=${SECS:-2}
# the cgroups of sched-fairness's latency rounds
mkcg bf 100; mkcg bf/sh 150; mkcg bf/sl 50
T=/sys/kernel/tracing
[ -d $T/events ] || T=/sys/kernel/debug/tracing
[ -d $T/events/sched ] || fail "no tracefs sched events in the guest"
echo 8192 > $T/buffer_size_kb
for e in sched_switch sched_waking sched_wakeup; do echo 1 > $T/events/sched/$e/enable; done
[ "$WITH_HOGS" = 1 ] && hogs bf/sl "$(nproc)"
traced() { # LABEL
    echo 0 > $T/tracing_on; echo > $T/trace; echo 1 > $T/tracing_on
    sh -c "echo \$\$ > $CG/bf/sh/cgroup.procs; exec agentcg-schedbench wakeup $SECS 4" >/tmp/r.txt ||
        fail "wake-up workload failed"
    echo 0 > $T/tracing_on
    echo "RESULT $1 $(cat /tmp/r.txt)"
    echo "=== TRACE $1"
    grep -v '^#' $T/trace | gzip -c | base64
    echo "=== END $1"
}
under() { # LABEL BINARY
    "$2" >/tmp/sched.log 2>&1 &
    SCHED=$!
    wait_state enabled 30 || { cat /tmp/sched.log; fail "$2 did not attach"; }
    traced "$1"
    kill "$SCHED"; wait "$SCHED" 2>/dev/null; SCHED=
    wait_state disabled 30 || fail "$2 did not detach"
}
r=1
while [ $r -le "$ROUNDS" ]; do
    traced "kernel-$r"
    under "agentcg-$r" scx_agentcg
    [ -n "${SCHEDFLOOR:-}" ] && under "floor-$r" "$SCHEDFLOOR"
    r=$((r + 1))
done
cleanup
echo "SCHED-WAKEUP-TRACE DONE"
