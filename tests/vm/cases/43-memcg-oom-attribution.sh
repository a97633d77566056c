#!/bin/sh
# 43-memcg-oom-attribution: an OOM kill inside the agentcg tree is seen in
# memory.events and attributed, in `agentcgd status --json`, to its session
# and family. A process named "aider" (policy family aider, started with
# AGENTCG_PRIORITY=low as a user picks per launch: session_low)
# replays a trace that cannot fit under agentcg/memory.max; it must be in
# its own agent leaf (session_low/aider-<pid>) while it grows; the kernel
# kills it; status must show the kill in session_low for family aider, and
# the emptied leaf goes.
#
# Needs agentcgd to run the memcg controller (memcg section of status with a
# fallback/bpf backend); SKIPs where it does not.
CG=/sys/fs/cgroup
R=$CG/agentcg
W=/tmp/t43
mkdir -p $W/bin
D=
# status --json is pretty-printed: one line, no blanks after "key":
compact() { sed 's/^ *//' | tr -d '\n' | sed 's/": /":/g'; }
fail() {
    echo "FAIL: $*"
    echo "--- agentcgd log"; grep -v DEBUG $W/agentcgd.log 2>/dev/null | tail -n 30
    [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1
}
cg() { sed -n 's/^0:://p' /proc/$1/cgroup 2>/dev/null; }

agentcgd --state $W/state.json > $W/agentcgd.log 2>&1 & D=$!
i=0; until [ -d $R/session_low ] && agentcgd status --json --state $W/state.json > $W/raw.json 2>/dev/null; do
    i=$((i+1)); [ $i -gt 200 ] && fail "agentcgd did not come up: $(cat $W/agentcgd.log)"; usleep 100000; done
compact < $W/raw.json > $W/st.json
if ! grep -q '"backend":"\(fallback\|bpf\)' $W/st.json; then
    echo "status: $(cat $W/st.json | head -c 600)"
    echo "SKIP: agentcgd does not run the memcg controller yet (no memcg backend in status)"
    kill $D; wait $D; exit 0
fi
echo 120000000 > $R/memory.max || fail "cannot set agentcg memory.max"
printf 't_s,mem_mb\n0,10\n0.5,100\n1,300\n2,300\n' > $W/big.csv
ln -sf "$(command -v agentcg-replay)" $W/bin/aider
AGENTCG_PRIORITY=low $W/bin/aider --trace $W/big.csv --speed 1 > $W/aider.out 2>&1 & a=$!
# It takes seconds to grow past the limit (tens of MB/s under TCG).
i=0; until [ "$(cg $a)" = /agentcg/session_low/aider-$a ]; do
    i=$((i+1)); [ $i -gt 200 ] || [ ! -d /proc/$a ] && fail "aider ($a) not in its leaf session_low/aider-$a: '$(cg $a)'"; usleep 10000; done
echo "aider $a in $(cg $a)"
wait $a; rc=$?
[ $rc = 137 ] || fail "aider replay was not SIGKILLed (rc $rc): $(cat $W/aider.out)"
echo "session_low memory.events: $(tr '\n' ' ' < $R/session_low/memory.events)"
i=0; while :; do
    agentcgd status --json --state $W/state.json | compact > $W/st.json
    grep -q '"oom_kills":\[[^]]*"session":"session_low"[^]]*"family":"aider"' $W/st.json && break
    i=$((i+1)); [ $i -gt 50 ] && fail "status does not show the OOM kill for aider: $(cat $W/st.json)"; usleep 100000
done
i=0; while [ -d $R/session_low/aider-$a ]; do i=$((i+1)); [ $i -gt 100 ] && fail "leaf aider-$a not removed after the kill"; usleep 20000; done
kill $D; wait $D
echo "memcg: $(grep -o '"memcg":{[^}]*}' $W/st.json | head -c 700)"
echo "oom_kills: $(grep -o '"oom_kills":\[[^]]*\]' $W/st.json)"
grep -q '"oom_kill":{"high":0,"low":[1-9]' $W/st.json || fail "memcg status counts no oom_kill in session low"
echo "PASS: OOM kill in session_low seen and attributed to family aider"
