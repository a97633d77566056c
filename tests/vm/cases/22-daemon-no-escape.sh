#!/bin/sh
# 22-daemon-no-escape: placement that no process escapes, on the sched_ext
# kernel with the scheduler and memcg running: agents that fork workers
# right after exec (no exec in the workers) are placed whole, 20 runs of
# 10 agents x (1 + 5 workers + 5 grandchildren) within 1 s each; a process
# that renames itself into a rule is placed; the session cgroups removed
# under the running daemon are reported and rebuilt.
R=/sys/fs/cgroup/agentcg
W=/tmp/t22
mkdir -p $W/bin $W/pol
D=
fail() { echo "FAIL: $*"; echo "--- agentcgd log"; tail -30 $W/log 2>/dev/null; [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1; }
cg() { sed -n 's/^0:://p' /proc/$1/cgroup 2>/dev/null; }
# Every process below $1 (itself included), from the children files.
subtree() { echo $1; for t in /proc/$1/task/*; do for c in $(cat $t/children 2>/dev/null); do subtree $c; done; done; }

cat > $W/pol/10-fork.yaml <<P
family: forker
priority: high
match:
  - comm: agentcg-fk
  - comm: agentcg-renamed
P
# The agent: a script (comm agentcg-fk) whose first commands fork five
# subshells, each of which forks another; none of them execs.
mkfifo $W/fifo
printf '#!/bin/sh\nfor i in 1 2 3 4 5; do ( ( read x < %s ) & read x < %s ) & done\nread x < %s\n' \
    $W/fifo $W/fifo $W/fifo > $W/bin/agentcg-fk
chmod +x $W/bin/agentcg-fk

agentcgd --policies $W/pol /sys/fs/cgroup/agentcg > $W/log 2>&1 & D=$!
i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i+1)); [ $i -gt 300 ] && fail "no state file"; usleep 100000; done
grep -q "process events from bpf" $W/log || fail "not on BPF events: $(grep 'process events' $W/log)"

worst=0
for run in $(seq 20); do
    t0=$(cut -d' ' -f1 /proc/uptime)
    agents=
    for a in 1 2 3 4 5 6 7 8 9 10; do $W/bin/agentcg-fk & agents="$agents $!"; done
    ok=0
    for try in $(seq 100); do
        all=$(for a in $agents; do subtree $a; done)
        n=0; out=0
        for p in $all; do n=$((n+1)); [ "$(cg $p)" = /agentcg/session_high ] || out=$((out+1)); done
        now=$(cut -d' ' -f1 /proc/uptime)
        ms=$(echo "$t0 $now" | awk '{ printf "%d", ($2 - $1) * 1000 }')
        if [ $n = 110 ] && [ $out = 0 ]; then ok=1; break; fi
        [ $ms -gt 1000 ] && break
        usleep 10000
    done
    [ $ok = 1 ] || fail "run $run: $out of $n processes outside session_high after $ms ms"
    [ $ms -gt $worst ] && worst=$ms
    for a in $agents; do for p in $(subtree $a); do kill $p 2>/dev/null; done; done
    wait $agents 2>/dev/null
done
echo "forking agents: 20 runs x 110 processes all in session_high, slowest run seen complete after $worst ms"

# Rename into a rule (prctl(PR_SET_NAME) through /proc/self/comm).
mkfifo $W/go
sh -c "read x < $W/go; printf %s agentcg-renamed > /proc/self/comm; read x < $W/fifo" & rn=$!
usleep 200000
[ "$(cg $rn)" = / ] || fail "renamer placed before renaming: $(cg $rn)"
echo go > $W/go
i=0; until [ "$(cg $rn)" = /agentcg/session_high ]; do i=$((i+1)); [ $i -gt 100 ] && fail "renamed process not placed: $(cg $rn), comm $(cat /proc/$rn/comm)"; usleep 10000; done
echo "renamed process placed after about $((i * 10)) ms"

# Remove the session cgroups under the running daemon.
echo $rn > /sys/fs/cgroup/cgroup.procs
rmdir $R/session_high $R/session_low || fail "cannot remove the sessions"
i=0; until [ "$(cg $rn)" = /agentcg/session_high ]; do i=$((i+1)); [ $i -gt 300 ] && fail "tree not rebuilt / tracked process not placed again: $(cg $rn)"; usleep 10000; done
[ "$(cat $R/session_high/cpu.weight)" = 150 ] || fail "rebuilt session_high has cpu.weight $(cat $R/session_high/cpu.weight)"
grep -q "lost" $W/log || fail "the loss was not logged"
usleep 300000
agentcgd status --json > $W/st.json
grep -q '"tree_rebuilds": [1-9]' $W/st.json || fail "status does not count the rebuild: $(grep tree_ $W/st.json)"
echo "tree rebuilt after about $((i * 10)) ms: $(grep '"tree_error"' $W/st.json)"
kill $rn 2>/dev/null
kill -TERM $D; wait $D; D=
echo "PASS: forked workers, renames and a lost tree are all placed"
