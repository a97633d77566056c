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
fail() { echo "FAIL: $*"; echo "--- agentcgd log"; grep -v DEBUG $W/log 2>/dev/null | tail -30; [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1; }
cg() { sed -n 's/^0:://p' /proc/$1/cgroup 2>/dev/null; }
# Every process below $1 (itself included), from the children files.
fk_pids() { awk 'FNR == 1 && $0 == "agentcg-fk" { split(FILENAME, a, "/"); print a[3] }' /proc/[0-9]*/comm 2>/dev/null; }

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

RUST_LOG=debug agentcgd --policies $W/pol /sys/fs/cgroup/agentcg > $W/log 2>&1 & D=$!
i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i+1)); [ $i -gt 300 ] && fail "no state file"; usleep 100000; done
grep -q "process events from bpf" $W/log || fail "not on BPF events: $(grep 'process events' $W/log)"
# Start once the scheduler is attached: an agent exec'd while sched_ext is
# being enabled was seen missing in this VM (docs/benchmarks-placement.md,
# known issues); this case is about forks, renames and the lost tree.
i=0; until [ "$(cat /sys/kernel/sched_ext/state 2>/dev/null)" = enabled ]; do i=$((i+1)); [ $i -gt 300 ] && fail "sched_ext not enabled"; usleep 100000; done

# "total placed" of the agents' processes (all named agentcg-fk), in one
# awk over /proc: shell loops are too slow under TCG to time anything.
count() {
    awk 'NR == FNR { high[$1] = 1; next }
         FNR == 1 && $0 == "agentcg-fk" { split(FILENAME, a, "/"); t++; if (a[3] in high) p++ }
         END { printf "%d %d\n", t, p }' $R/session_high/cgroup.procs /proc/[0-9]*/comm 2>/dev/null
}
worst=0
for run in $(seq 20); do
    t0=$(cut -d' ' -f1 /proc/uptime)
    agents=
    for a in 1 2 3 4 5 6 7 8 9 10; do $W/bin/agentcg-fk & agents="$agents $!"; done
    ok=0
    for try in $(seq 200); do
        set -- $(count)
        if [ "$1" = 110 ] && [ "$2" = 110 ]; then ok=1; break; fi
        usleep 20000
    done
    now=$(cut -d' ' -f1 /proc/uptime)
    ms=$(echo "$t0 $now" | awk '{ printf "%d", ($2 - $1) * 1000 }')
    if [ $ok != 1 ]; then
        for p in $(fk_pids); do
            c=$(cg $p); [ "$c" = /agentcg/session_high ] && continue
            echo "outside: pid $p ppid $(cut -d' ' -f4 /proc/$p/stat) in $c"
            grep -w "$p" $W/log | tail -3
        done
        agentcgd status --json | grep -E '"(placed|already_placed|vanished|pid_reused|errors|reconciles|exec_seen|exec_passed|exec|lost)"'
        # Does one more event bring the missing one along (a lost wake-up)?
        $W/bin/agentcg-fk & poke=$!
        usleep 2000000
        set -- $(fk_pids); echo "after a poke: first outside pid $(for p in $(fk_pids); do [ "$(cg $p)" = /agentcg/session_high ] || { echo $p; break; }; done)"
        agentcgd status --json | grep -E '"(exec_passed|exec)"'
        fail "run $run: $2 of $1 agent processes in session_high after $ms ms"
    fi
    [ $ms -gt $worst ] && worst=$ms
    kill $(fk_pids) 2>/dev/null
    wait $agents 2>/dev/null
    for try in $(seq 100); do set -- $(count); [ "$1" = 0 ] && break; kill $(fk_pids) 2>/dev/null; usleep 20000; done
done
echo "forking agents: 20 runs x 110 processes all in session_high (slowest run complete after $worst ms of guest time)"

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
