#!/bin/sh
# 31-sched-attach: scx_agentcg attaches (state enabled, ops "agentcg", queued
# wake-ups allowed), its statistics name our cgroups, `scx_agentcg
# --monitor` reads its counters from its scx_stats socket, a burst of
# wake-ups is enqueued by the CPU its waker woke, a producer is not
# preempted at every message, and SIGTERM hands the CPU back to the
# kernel's own scheduler (state disabled).
CG=/sys/fs/cgroup
SX=/sys/kernel/sched_ext
SCHED=
HOGS=
fail() { echo "FAIL: $*"; cleanup; exit 1; }
cleanup() {
    for p in $HOGS; do kill -9 "$p" 2>/dev/null; done
    [ -n "$SCHED" ] && kill "$SCHED" 2>/dev/null && wait "$SCHED" 2>/dev/null
    SCHED=
}
wait_state() { # STATE SECONDS
    i=0
    while [ "$(cat $SX/state 2>/dev/null)" != "$1" ]; do
        i=$((i + 1)); [ $i -gt $(($2 * 10)) ] && return 1
        usleep 100000
    done
}

[ -d $SX ] || fail "kernel has no sched_ext ($SX missing)"
echo "kernel $(uname -r); sched_ext state: $(cat $SX/state)"
[ "$(cat $SX/state)" = disabled ] || fail "sched_ext not disabled at start"

echo +cpu > $CG/cgroup.subtree_control || fail "cannot enable the cpu controller"
mkdir -p $CG/t31
echo +cpu > $CG/t31/cgroup.subtree_control || fail "cannot enable cpu in t31"
mkdir -p $CG/t31/a
echo 200 > $CG/t31/a/cpu.weight || fail "cannot write cpu.weight"
sh -c "echo \$\$ > $CG/t31/a/cgroup.procs; while :; do :; done" &
HOGS="$!"

scx_agentcg --stats -i 1 >/tmp/scx31.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx31.log; fail "state never became enabled"; }
ops=$(cat $SX/root/ops)
echo "state: $(cat $SX/state), ops: $ops"
[ "$ops" = agentcg ] || fail "ops name is '$ops', want agentcg"
# the loader allows queued wake-ups (SCX_OPS_ALLOW_QUEUED_WAKEUP, 1 << 5)
# where the kernel knows the flag (sched_ext_ops in its BTF says so)
flags=$(bpftool struct_ops dump name agentcg_ops | awk -F'[:,]' '$1 ~ /"flags"/ { gsub(/ /, "", $2); print $2; exit }')
echo "ops flags: $flags"
if bpftool btf dump file /sys/kernel/btf/vmlinux 2>/dev/null | grep -q "'SCX_OPS_ALLOW_QUEUED_WAKEUP'"; then
    [ $(( ${flags:-0} & 32 )) -ne 0 ] || fail "ops flags '$flags' lack SCX_OPS_ALLOW_QUEUED_WAKEUP"
else
    echo "kernel has no SCX_OPS_ALLOW_QUEUED_WAKEUP: not checked"
fi
sleep 3
kill -0 $SCHED || { cat /tmp/scx31.log; fail "scx_agentcg died"; }
grep -q "/t31" /tmp/scx31.log || { cat /tmp/scx31.log; fail "stats do not show /t31"; }
tail -n 8 /tmp/scx31.log

# its counters on the scx_stats socket, read by a second instance
scx_agentcg --monitor -i 0.5 >/tmp/mon31.log 2>&1 &
MON=$!
sleep 2
kill $MON 2>/dev/null; wait $MON 2>/dev/null
head -n 2 /tmp/mon31.log
grep -q "hweight_updates=[1-9].* pick_budget=0" /tmp/mon31.log ||
    fail "scx_agentcg --monitor did not read the counters from the stats socket"

# A waker that wakes several tasks of its own cgroup (a fan-out) does not
# sleep after the first: its wakees, behind it in vtime, take the idle CPU
# or preempt (counter preempts; with no other cgroup running, only this
# rule preempts), instead of waiting for it to sleep (docs/scheduler.md).
kill -9 $HOGS; HOGS=
monitor_counter() { # NAME: as scx_agentcg --monitor prints it
    scx_agentcg --monitor -i 0.5 >/tmp/wl31.log 2>&1 &
    m=$!; usleep 1500000; kill $m; wait $m 2>/dev/null
    grep -o "$1=[0-9]*" /tmp/wl31.log | tail -n 1 | cut -d= -f2
}
p0=$(monitor_counter preempts)
sh -c "echo \$\$ > $CG/t31/a/cgroup.procs; exec agentcg-schedbench wakeup 2 4" >/tmp/wake31.txt ||
    fail "wake-up workload failed"
p1=$(monitor_counter preempts)
n=$(awk '{ print $3 }' /tmp/wake31.txt)
echo "4 workers woken every 2 ms (p50 p99 samples cycles burst, us): $(cat /tmp/wake31.txt); preempts ${p0:-?} -> ${p1:-?}"
[ -n "$p0" ] && [ -n "$p1" ] && [ "${n:-0}" -gt 0 ] || fail "no counters or no wake-ups measured"
[ $((p1 - p0)) -ge $((n / 8)) ] || fail "$((p1 - p0)) preemptions for $n wake-ups of a fan-out"

# A producer that wakes a consumer of its own cgroup with every message
# (hackbench: 20000 pipe writes) is preempted for its cgroup at most once per
# slice / 8 on each CPU (the slice scx_agentcg reported), not at every message.
slice=$(sed -n 's/.*(slice \([0-9]*\) us).*/\1/p' /tmp/scx31.log | head -n 1)
[ -n "$slice" ] || { cat /tmp/scx31.log; fail "scx_agentcg did not report its slice"; }
p0=$(monitor_counter preempts)
t=$(sh -c "echo \$\$ > $CG/t31/a/cgroup.procs; exec agentcg-schedbench hackbench 2 100") ||
    fail "hackbench workload failed"
p1=$(monitor_counter preempts)
max=$(awk -v t="$t" -v n="$(nproc)" -v s="$slice" 'BEGIN { printf "%d", n * t * 1e6 / (s / 8) + 64 }')
echo "hackbench, 20000 messages in ${t}s: preempts ${p0:-?} -> ${p1:-?} (at most $max)"
[ -n "$p0" ] && [ -n "$p1" ] || fail "no counters around hackbench"
[ $((p1 - p0)) -le "$max" ] || fail "$((p1 - p0)) preemptions in hackbench's ${t}s, more than $max"

kill -TERM $SCHED
wait $SCHED; rc=$?
SCHED=
[ $rc -eq 0 ] || fail "scx_agentcg exited $rc after SIGTERM"
wait_state disabled 5 || fail "state is $(cat $SX/state) after SIGTERM, want disabled"
echo "after SIGTERM: state $(cat $SX/state)"
cleanup
echo "PASS 31-sched-attach"
