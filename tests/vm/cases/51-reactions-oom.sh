#!/bin/sh
# 51-reactions-oom: a real OOM kill of an agent sets off a reaction. A
# process named "aider" (family aider, started with AGENTCG_PRIORITY=low: session_low) replays a trace that
# cannot fit under agentcg/memory.max; the kernel kills it. The reaction
# `save` (on: [oom_kill]) must run once, outside the agent tree, with
# AGENTCG_EVENT=oom_kill and the agent's family, pid, cgroup (its own leaf,
# session_low/aider-<pid>) and cwd; the
# `note` rule (on: [crash], action: log) must log the SIGKILL death.
#
# Needs the memcg controller (it reports the OOM kill); SKIPs without it.
CG=/sys/fs/cgroup
R=$CG/agentcg
W=/tmp/t44
mkdir -p $W/bin $W/ws
D=
compact() { sed 's/^ *//' | tr -d '\n' | sed 's/": /":/g'; }
fail() { echo "FAIL: $*"; echo "--- log"; tail -n 30 $W/agentcgd.log; [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1; }

cat > $W/save <<'S'
#!/bin/sh
{ env | grep '^AGENTCG_' | sort; echo "CGROUP=$(grep '^0::' /proc/self/cgroup)"; } > /tmp/t44/save.out
S
chmod 755 $W/save
cat > $W/agentcgd.yaml <<C
reactions:
  enabled: true
  rules:
    - name: save
      on: [oom_kill]
      action: run
      command: [$W/save]
      user: root
    - name: note
      on: [crash]
      action: log
C
# No scheduler: not under test here.
agentcgd --no-scheduler --config $W/agentcgd.yaml --state $W/state.json > $W/agentcgd.log 2>&1 & D=$!
i=0; until [ -d $R/session_low ] && agentcgd status --json --state $W/state.json > $W/raw.json 2>/dev/null; do
    i=$((i+1)); [ $i -gt 900 ] && fail "agentcgd did not come up"; usleep 100000; done
compact < $W/raw.json > $W/st.json
if ! grep -q '"backend":"\(fallback\|bpf\)' $W/st.json; then
    echo "SKIP: agentcgd does not run the memcg controller here (no memcg backend in status)"
    kill $D; wait $D; exit 0
fi
agentcgd status --state $W/state.json | grep -q '^reactions: 2 rules' || fail "reactions not enabled in status: $(agentcgd status --state $W/state.json | grep '^reactions')"
echo 120000000 > $R/memory.max || fail "cannot set agentcg memory.max"
printf 't_s,mem_mb\n0,10\n0.5,100\n1,300\n2,300\n' > $W/big.csv
ln -sf "$(command -v agentcg-replay)" $W/bin/aider
( cd $W/ws && AGENTCG_PRIORITY=low exec $W/bin/aider --trace $W/big.csv --speed 1 > $W/aider.out 2>&1 ) & a=$!
wait $a; rc=$?
[ $rc = 137 ] || fail "aider replay was not SIGKILLed (rc $rc): $(cat $W/aider.out)"
i=0; until [ -s $W/save.out ]; do
    i=$((i+1)); [ $i -gt 100 ] && fail "the oom_kill reaction did not run: $(agentcgd status --json --state $W/state.json | compact | grep -o '"reactions":{.\{0,900\}')"
    usleep 100000
done
usleep 1500000
echo "action environment:"; sed 's/^/  /' $W/save.out
grep -qx "AGENTCG_EVENT=oom_kill" $W/save.out || fail "AGENTCG_EVENT"
grep -qx "AGENTCG_FAMILY=aider" $W/save.out || fail "AGENTCG_FAMILY"
grep -qx "AGENTCG_PID=$a" $W/save.out || fail "AGENTCG_PID (want $a)"
grep -qx "AGENTCG_AGENT=aider-$a" $W/save.out || fail "AGENTCG_AGENT"
grep -qx "AGENTCG_EXIT=signal:SIGKILL" $W/save.out || fail "AGENTCG_EXIT"
grep -qx "AGENTCG_CGROUP=$R/session_low/aider-$a" $W/save.out || fail "AGENTCG_CGROUP (want its leaf $R/session_low/aider-$a)"
grep -qx "AGENTCG_CWD=$W/ws" $W/save.out || fail "AGENTCG_CWD"
grep -q "^CGROUP=0::/agentcg" $W/save.out && fail "the action ran inside the agent tree"
grep -q "^CGROUP=0::/" $W/save.out || fail "no cgroup recorded for the action"
agentcgd status --json --state $W/state.json | compact > $W/st.json
grep -q '"runs":1,' $W/st.json || fail "want exactly one run: $(grep -o '"counters":{[^}]*}' $W/st.json)"
grep -q "reaction note: crash of aider-$a (pid $a, signal:SIGKILL)" $W/agentcgd.log || fail "no crash log line"
agentcgd status --state $W/state.json | grep '^reactions:\|^  .*save:' | head -3
kill $D; wait $D
echo "PASS: the OOM kill of aider ran the save reaction once with its environment, outside the tree"
