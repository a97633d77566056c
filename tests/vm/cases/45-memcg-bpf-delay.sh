#!/bin/sh
# vm-kernel: ../shared/kernels/vmlinuz-7.3.4-memcg-bpf-ops
# 45-memcg-bpf-delay: the BPF backend's point, on the kernel with
# memcg_bpf_ops (skipped, naming the file, where that image is missing).
# Under a tight agentcg/memory.max (200 MB) a HIGH replay bursts 20 -> 130
# MB and holds it for a while; during that time a LOW replay wants to grow
# 20 -> 100 MB: together 230 MB, over the limit. (Small sizes and a late
# LOW burst: under TCG a replay touches only some tens of MB/s, so the
# replays lag their traces; the order HIGH burst, then LOW burst, holds.)
#
#   baseline  no daemon: the kernel has to OOM-kill (the premise; checked).
#   bpf       agentcgd (shipped config but bpf_burst_mb 16 and window_ms 2000,
#             see below; scheduler off) with the BPF backend:
#             session_high's burst is pressure and the tree is near its
#             limit, so session_low's charges are delayed by
#             get_high_delay_ms until HIGH has given the burst back; nothing
#             is killed, LOW completes later (its slowest allocation step
#             takes at least one bpf_delay_ms), the delay is in the status.
#
# The replays are put into the sessions by the script (not by policy): no
# oom_score_adj steering, so an OOM would be the kernel's plain choice. As
# the daemon's sessions hold only leaves, each replay gets a leaf made the
# way the daemon makes an agent's (session_high/t45, session_low/t45:
# memory enabled for them, memory.min/low max) in both rounds.
CG=/sys/fs/cgroup
R=$CG/agentcg
W=/tmp/t45
mkdir -p $W
LIMIT_MB=200
D=
fail() {
    echo "FAIL: $*"
    [ -r $W/d.log ] && { echo "--- daemon log (tail)"; tail -20 $W/d.log; }
    [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1
}
REPLAY=$(command -v agentcg-replay) || fail "agentcg-replay not on PATH"
grep -q memcg_bpf_ops /sys/kernel/btf/vmlinux || fail "kernel $(uname -r) has no memcg_bpf_ops in its BTF: wrong image"
cat > $W/high.csv <<'T'
t_s,mem_mb,cpu_pct
0,20,0
0.5,20,0
1.0,130,0
12.0,130,0
12.5,20,0
13.0,20,0
T
cat > $W/low.csv <<'T'
t_s,mem_mb,cpu_pct
0,20,0
8.0,20,0
8.5,100,0
14.0,100,0
14.5,100,0
T
field() { echo "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" | head -1; }
compact() { sed 's/^ *//' | tr -d '\n' | sed 's/": /":/g'; }
dstat() { agentcgd status --json --state $W/state.json 2>/dev/null | compact; }
oomk() { sed -n 's/^oom_kill //p' $R/memory.events; }

echo +memory > $CG/cgroup.subtree_control
mkdir -p $R && echo +memory > $R/cgroup.subtree_control && mkdir -p $R/session_high $R/session_low || fail "tree"
for s in session_high session_low; do
    echo +memory > $R/$s/cgroup.subtree_control && mkdir -p $R/$s/t45 &&
        echo max > $R/$s/t45/memory.min && echo max > $R/$s/t45/memory.low || fail "leaf $s/t45"
done
echo $((LIMIT_MB * 1000000)) > $R/memory.max || fail "memory.max"

round() { # MODE
    k0=$(oomk)
    sh -c "echo \$\$ > $R/session_high/t45/cgroup.procs && exec $REPLAY --trace $W/high.csv --json --label high" > $W/high.out 2>&1 & ph=$!
    sh -c "echo \$\$ > $R/session_low/t45/cgroup.procs && exec $REPLAY --trace $W/low.csv --json --label low" > $W/low.out 2>&1 & pl=$!
    wait $ph; rh=$?; wait $pl; rl=$?
    KILLS=$(( $(oomk) - k0 ))
    H=$(grep '^{' $W/high.out | tail -1); L=$(grep '^{' $W/low.out | tail -1)
    RH=$rh RL=$rl
    echo "$1: rc high=$rh low=$rl, oom_kill +$KILLS; LOW slowest step $(field "$L" alloc_max_ms) ms, LOW $(field "$L" duration_s) s; HIGH p95 $(field "$H" alloc_p95_ms) ms"
}

round baseline
[ $KILLS -gt 0 ] || fail "premise: without the daemon the scenario should OOM-kill (HIGH 130 + LOW 100 MB > $LIMIT_MB MB), nothing was killed"

# The shipped config with a lower burst rate: under TCG on a busy host a
# replay touches only 25-50 MB/s, below the shipped 32 MB per 1 s window
# that is meant for real hardware.
sed 's/^memcg:.*/memcg: {enabled: true, bpf_burst_mb: 16, window_ms: 2000}/' /etc/agentcgd/agentcgd.yaml > $W/agentcgd.yaml
grep -q 'bpf_burst_mb: 16' $W/agentcgd.yaml || fail "cannot derive the config from /etc/agentcgd/agentcgd.yaml"
rm -f $W/state.json
agentcgd $R --config $W/agentcgd.yaml --state $W/state.json --no-scheduler > $W/d.log 2>&1 & D=$!
i=0; until dstat | grep -q '"running":true.*"memcg":{[^}]*"backend":"[a-z]'; do
    i=$((i + 1)); [ $i -gt 600 ] && fail "agentcgd did not come up: $(dstat | head -c 600)"
    kill -0 $D 2>/dev/null || fail "agentcgd exited"; usleep 50000; done
b=$(dstat | sed -n 's/.*"memcg":{[^}]*"backend":"\([^"]*\)".*/\1/p')
[ "$b" = "bpf: memcg_bpf_ops" ] || fail "memcg backend is '$b', not 'bpf: memcg_bpf_ops'"
# bpf_delay_ms of the shipped config (the default where it does not say).
delay=$(sed -n 's/^ *bpf_delay_ms: *\([0-9]*\).*/\1/p' /etc/agentcgd/agentcgd.yaml)
delay=${delay:-2000}
round bpf
st=$(dstat)
kill -TERM $D; wait $D; D=
thr=$(echo "$st" | sed -n 's/.*"bpf":{[^}]*"throttle_calls":\([0-9]*\).*/\1/p')
bursts=$(echo "$st" | sed -n 's/.*"bpf":{[^}]*"burst_events":\([0-9]*\).*/\1/p')
echo "bpf status: burst_events=$bursts throttle_calls=$thr"
[ $KILLS = 0 ] || fail "OOM kill under the BPF backend (+$KILLS)"
[ $RH = 0 ] || fail "HIGH did not complete under the BPF backend (rc $RH)"
[ $RL = 0 ] || fail "LOW did not complete under the BPF backend (rc $RL)"
[ "${thr:-0}" -gt 0 ] || fail "session_low was never delayed (throttle_calls $thr)"
awk -v m="$(field "$L" alloc_max_ms)" -v d="$delay" 'BEGIN{exit !(m >= d)}' ||
    fail "LOW's slowest allocation step ($(field "$L" alloc_max_ms) ms) is shorter than one bpf_delay_ms ($delay ms)"
echo "PASS: under a tight limit the BPF backend delayed LOW instead of an OOM kill; HIGH and LOW completed"
