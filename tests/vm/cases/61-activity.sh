#!/bin/sh
# 61-activity: the activity monitor (agentcg-activity selftest, the same
# checks as activity/tests/host_activity.rs) on the sched_ext kernel with
# the cpu controller on, in leaves of a session tree: a 1 s work / 4 s sleep
# agent goes idle ~2 s into each sleep and active within 100 ms of working
# (BPF; cpu.stat within its sampling interval), an agent blocked on a pipe
# is idle, one spinning thread among 20 sleeping ones is active, an agent
# with a session_high and a session_low leaf; then the cycle again under
# scx_agentcg. cpu.idle and cpu.weight of every cgroup
# under the test root are read before, every 500 ms during and after the
# runs: the monitor observes, it must not have changed any of them.
. /vm/lib/sched.sh
T=$CG/act61
SAMPLER=
cleanup() {
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null && wait "$SAMPLER" 2>/dev/null
    SAMPLER=
    [ -n "$SCHED" ] && kill "$SCHED" 2>/dev/null && wait "$SCHED" 2>/dev/null
    SCHED=
}
command -v agentcg-activity >/dev/null || fail "no agentcg-activity in the guest (make static)"
[ -e /sys/kernel/btf/vmlinux ] || { echo "SKIP: kernel BTF (/sys/kernel/btf/vmlinux) missing"; exit 0; }
[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"

echo +cpu > $CG/cgroup.subtree_control || fail "no cpu controller"
mkdir -p $T && echo +cpu > $T/cgroup.subtree_control || fail "cannot enable cpu in $T"
for s in session_high:150 session_low:50; do
    mkdir -p $T/${s%%:*} && echo ${s#*:} > $T/${s%%:*}/cpu.weight && echo +cpu > $T/${s%%:*}/cgroup.subtree_control || fail "cannot set up ${s%%:*}"
done
LEAVES="session_high/cycle-1:100 session_high/blocked-2:200 session_low/spinner-3:100 session_low/cycle-4:100 session_high/cycle-5:100 session_high/two-6:100 session_low/two-6:100"
for l in $LEAVES; do
    mkdir -p $T/${l%%:*} && echo ${l#*:} > $T/${l%%:*}/cpu.weight || fail "cannot create ${l%%:*}"
done
# one non-default cpu.idle, so that a change back to 0 shows too
echo 1 > $T/session_low/spinner-3/cpu.idle || fail "cannot set cpu.idle"

knobs() { find $T -name cpu.idle -o -name cpu.weight | sort | while read -r f; do echo "${f#$T/} $(cat "$f")"; done; }
knobs > /tmp/knobs.before
echo "cpu.idle and cpu.weight under $T:"; sed 's/^/  /' /tmp/knobs.before
[ "$(wc -l < /tmp/knobs.before)" -ge 20 ] || fail "expected cpu.idle and cpu.weight in 10 cgroups"
( while :; do knobs > /tmp/knobs.now; cmp -s /tmp/knobs.before /tmp/knobs.now || { diff /tmp/knobs.before /tmp/knobs.now > /tmp/knobs.changed; }; usleep 500000; done ) &
SAMPLER=$!

rc=0
run() { # NAME ARGS...: one selftest, its output indented; run again once
    # when its premise did not hold (exit 3: the VM kept it off its CPU)
    echo "== $1"; shift
    for try in 1 2; do
        agentcg-activity selftest "$@" > /tmp/selftest.log 2>&1; r=$?
        sed 's/^/  /' /tmp/selftest.log
        [ $r -eq 3 ] && [ $try -eq 1 ] && { echo "  (inconclusive: running it again)"; continue; }
        break
    done
    grep -q '^PASS' /tmp/selftest.log && [ $r -eq 0 ] || rc=1
}
run "work/sleep cycles (bpf)" cycle --backend bpf --cycles 3 --leaf $T/session_high/cycle-1
run "blocked on a pipe (bpf)" blocked --backend bpf --leaf $T/session_high/blocked-2
run "one spinner among 20 sleepers (bpf)" spinner --backend bpf --leaf $T/session_low/spinner-3
run "work/sleep cycles (cpu.stat)" cycle --backend cpustat --cycles 2 --leaf $T/session_low/cycle-4
run "one agent, two leaves (bpf)" two-leaves --backend bpf --leaf $T/session_high/two-6 --leaf2 $T/session_low/two-6
scx_agentcg >/tmp/scx61.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx61.log; fail "scx_agentcg did not attach"; }
run "work/sleep cycles under scx_agentcg (bpf)" cycle --backend bpf --cycles 2 --leaf $T/session_high/cycle-5
kill $SCHED; wait $SCHED 2>/dev/null; SCHED=
wait_state disabled 10 || fail "sched_ext still $(cat $SX/state) after scx_agentcg stopped"

kill $SAMPLER; wait $SAMPLER 2>/dev/null; SAMPLER=
knobs > /tmp/knobs.after
if [ -s /tmp/knobs.changed ] || ! cmp -s /tmp/knobs.before /tmp/knobs.after; then
    echo "changed while the monitor ran:"; cat /tmp/knobs.changed 2>/dev/null
    diff /tmp/knobs.before /tmp/knobs.after
    fail "cpu.idle or cpu.weight changed under $T"
fi
echo "cpu.idle and cpu.weight of $(($(wc -l < /tmp/knobs.after) / 2)) cgroups unchanged after the runs"
[ $rc -eq 0 ] || fail "a selftest failed (see above)"
for l in $LEAVES; do rmdir $T/${l%%:*}; done
echo "PASS 61-activity"
