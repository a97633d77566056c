#!/bin/sh
# 22-daemon-no-escape: placement that no process escapes, on the sched_ext
# kernel with the scheduler and memcg running: agents that fork workers
# right after exec (no exec in the workers) are placed whole, each in its
# own agent's leaf (session_high/forker-<agent pid>), 20 runs of 10 agents
# x (1 + 5 workers + 5 grandchildren) within 1 s each, and the leaves are
# removed once the agents are gone; a process that renames itself into a
# rule is placed in a leaf of its own; the session cgroups removed under
# the running daemon are reported and rebuilt, the tracked process placed
# again in its leaf.
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

# "total placed" of the agents' processes (all named agentcg-fk): placed
# means in the leaf of its own agent, session_high/forker-<root>, the root
# being its oldest agentcg-fk ancestor (the agent the test started). One
# awk over the leaves' cgroup.procs and /proc/*/stat: shell loops are too
# slow under TCG to time anything. (busybox awk stops at a file that
# vanished or a leaf glob that matched nothing: the caller tries again.)
count() {
    awk 'FILENAME ~ /cgroup.procs$/ { split(FILENAME, a, "/"); leaf[$1] = a[7]; next }
         FNR == 1 { comm[$1] = $2; ppid[$1] = $4 }
         END {
             for (p in comm) {
                 if (comm[p] != "(agentcg-fk)") continue
                 t++; r = p
                 while (comm[ppid[r]] == "(agentcg-fk)") r = ppid[r]
                 if (leaf[p] == "forker-" r) ok++
             }
             printf "%d %d\n", t, ok
         }' $R/session_high/*/cgroup.procs /proc/[0-9]*/stat 2>/dev/null
}
leaves() { ls -d $R/session_high/forker-* $R/session_low/forker-* 2>/dev/null | wc -l; }
worst=0
worst_rm=0
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
            echo "pid $p ppid $(cut -d' ' -f4 /proc/$p/stat) in $(cg $p)"
            grep -w "$p" $W/log | tail -3
        done
        echo "agents started: $agents"
        agentcgd status --json | grep -E '"(placed|already_placed|vanished|pid_reused|errors|reconciles|exec_seen|exec_passed|exec|lost)"'
        # Does one more event bring the missing one along (a lost wake-up)?
        $W/bin/agentcg-fk & poke=$!
        usleep 2000000
        echo "after a poke: $(count) (total, in their agent's leaf)"
        agentcgd status --json | grep -E '"(exec_passed|exec)"'
        # Did procmon_exec run for every exec (recursion_misses)?
        bpftool prog show 2>/dev/null | grep -A3 'name procmon_exec'
        fail "run $run: $2 of $1 agent processes in their agent's leaf of session_high after $ms ms"
    fi
    [ $ms -gt $worst ] && worst=$ms
    kill $(fk_pids) 2>/dev/null
    wait $agents 2>/dev/null
    for try in $(seq 100); do [ -z "$(fk_pids)" ] && break; kill $(fk_pids) 2>/dev/null; usleep 20000; done
    # Their ten leaves go once they are empty. With two guests on the host
    # a removal took over 5 s in 1 of 3 runs (each time as a /proc
    # reconcile after a skipped tracer ran; not proven the cause): the
    # bound is 15 s and the slowest removal is printed.
    t0=$(cut -d' ' -f1 /proc/uptime)
    for try in $(seq 750); do [ "$(leaves)" = 0 ] && break; usleep 20000; done
    left=$(leaves)
    if [ "$left" != 0 ]; then
        for l in $R/session_*/forker-*; do
            echo "$l: $(grep populated $l/cgroup.events) procs: $(cat $l/cgroup.procs | tr '\n' ' ')"
            grep -F "${l##*/}" $W/log | tail -8
        done
        fail "run $run: $left leaves left 15 s after the agents exited"
    fi
    ms=$(awk -v a=$t0 -v b=$(cut -d' ' -f1 /proc/uptime) 'BEGIN { printf "%d", (b - a) * 1000 }')
    [ $ms -gt $worst_rm ] && worst_rm=$ms
done
echo "forking agents: 20 runs x 10 agents x 11 processes, each in its agent's leaf (slowest run complete after $worst ms of guest time); leaves removed after each run (slowest after $worst_rm ms)"
# 200 leaves came and went under the scheduler: it must not have exited
# (a leaf's mkdir fails while its cgroup_init errs, and the agent stays out).
scx_err=$(dmesg | grep 'sched_ext: .*disabled' | grep -v 'unregistered from user space')
[ -z "$scx_err" ] || fail "the sched_ext scheduler exited while leaves came and went: $scx_err $(dmesg | grep 'sched_ext: agentcg:')"

# Rename into a rule (prctl(PR_SET_NAME) through /proc/self/comm).
mkfifo $W/go
sh -c "read x < $W/go; printf %s agentcg-renamed > /proc/self/comm; read x < $W/fifo" & rn=$!
usleep 200000
[ "$(cg $rn)" = / ] || fail "renamer placed before renaming: $(cg $rn)"
echo go > $W/go
i=0; until [ "$(cg $rn)" = /agentcg/session_high/forker-$rn ]; do i=$((i+1)); [ $i -gt 100 ] && fail "renamed process not placed in its leaf: $(cg $rn), comm $(cat /proc/$rn/comm)"; usleep 10000; done
echo "renamed process placed in session_high/forker-$rn after about $((i * 10)) ms"

# Remove the session cgroups under the running daemon (its emptied leaf
# first: a cgroup with children cannot be removed).
echo $rn > /sys/fs/cgroup/cgroup.procs
i=0; while [ "$(leaves)" != 0 ]; do i=$((i+1)); [ $i -gt 100 ] && fail "leaf of the renamed process not removed once empty"; usleep 10000; done
rmdir $R/session_high $R/session_low || fail "cannot remove the sessions: $(ls $R/session_*)"
i=0; until [ "$(cg $rn)" = /agentcg/session_high/forker-$rn ]; do i=$((i+1)); [ $i -gt 300 ] && fail "tree not rebuilt / tracked process not placed again in its leaf: $(cg $rn)"; usleep 10000; done
[ "$(cat $R/session_high/cpu.weight)" = 150 ] || fail "rebuilt session_high has cpu.weight $(cat $R/session_high/cpu.weight)"
grep -q "lost" $W/log || fail "the loss was not logged"
usleep 300000
agentcgd status --json > $W/st.json
grep -q '"tree_rebuilds": [1-9]' $W/st.json || fail "status does not count the rebuild: $(grep tree_ $W/st.json)"
echo "tree rebuilt after about $((i * 10)) ms: $(grep '"tree_error"' $W/st.json)"
kill $rn 2>/dev/null
kill -TERM $D; wait $D; D=
echo "leaves opened and given up with nothing moved in: $(grep -c 'nothing moved in; given up' $W/log)"
echo "PASS: forked workers, renames and a lost tree are all placed"
