#!/bin/sh
# 23-daemon-leaf-weights: per-agent leaves share CPU as configured, under
# the daemon's sched_ext scheduler and then under the kernel's own
# (`agentcgd --no-scheduler`), in one boot. Agents are processes whose comm
# matches a family rule, placed by the daemon (not by hand), each busy on
# every CPU (one spinning child per CPU: without contention any split is
# 1:1). Families (policies written below, shipped agentcgd.yaml: sessions
# 150:50):
#   lw-heavy  comm agentcg-w3, session_high, cpu_weight: 300
#   lw-light  comm agentcg-w1, session_high, cpu_weight: 100
#   lw-bg     comm agentcg-wl, session_low   (cpu_weight unset: 100)
# Per scheduler:
#   1. one lw-heavy and one lw-light agent, nothing else: their leaves
#      (session_high/lw-heavy-<pid>, session_high/lw-light-<pid>) split
#      session_high 3:1 (300:100) within TOL;
#   2. plus a second lw-light agent and one lw-bg agent (three agents in
#      session_high, one in session_low): session_high:session_low is still
#      3:1 (150:50) within TOL, and inside session_high the lw-heavy leaf
#      still gets 3x each lw-light leaf's share.
# Figures: docs/benchmarks-scheduler.md ("Per-agent leaves").
#
#
# Tolerance. Under scx_agentcg every ratio is held within 5% (TOL of the
# other scheduler cases) with one busy child per CPU per agent. The
# kernel's scheduler (EEVDF with the cgroup cpu controller) spreads a
# group's weight over CPUs by its load and relies on the load balancer, so
# with one task per CPU per group its split is far off in this VM whatever
# the layout (docs/benchmarks-scheduler.md, Fairness: flat 150:50 off by
# 58%; this case with 1 per CPU: 2.38:1, sessions 4.84:1). It gets four
# busy children per CPU per agent and 25%: what is checked there is that
# the leaves keep the kernel's weights working (measured 2.64:1, 2.71:1,
# 3.02:1), not the kernel's precision.
#
# Usage (guest): 23-daemon-leaf-weights.sh [PHASE[:PER_CPU[:TOL]]]...,
# PHASE agentcg (the daemon's scheduler) or kernel (--no-scheduler);
# default: agentcg:1:0.05 kernel:4:0.25.
. /vm/lib/sched.sh
PHASES=${*:-agentcg:1:0.05 kernel:4:0.25}

R=$CG/agentcg
W=/tmp/t23
mkdir -p $W/bin $W/pol
D=
AGENTS=
stop_all() {
    for p in $AGENTS; do kill -9 $p 2>/dev/null; done
    # the agents' spinning children (all of them in the leaves)
    for f in $R/session_high/*/cgroup.procs $R/session_low/*/cgroup.procs; do
        [ -r $f ] && kill -9 $(cat $f) 2>/dev/null
    done
    AGENTS=
}
fail() {
    echo "FAIL: $*"
    echo "--- agentcgd log"; daemon_log $W/log
    stop_all; [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1
}
cg() { sed -n 's/^0:://p' /proc/$1/cgroup 2>/dev/null; }

for f in heavy:agentcg-w3:high:300 light:agentcg-w1:high:100 bg:agentcg-wl:low:; do
    IFS=: read -r fam comm prio w <<F
$f
F
    { echo "family: lw-$fam"; echo "priority: $prio"; echo "match:"; echo "  - comm: $comm"
      [ -n "$w" ] && echo "cpu_weight: $w"; } > $W/pol/$fam.yaml
    # The agent: $1 busy children (forks keep its comm and its leaf).
    printf '#!/bin/sh\ni=0; while [ $i -lt $1 ]; do (while :; do :; done) & i=$((i + 1)); done\nwait\n' \
        > $W/bin/$comm
    chmod +x $W/bin/$comm
done
agentcgd check --policies $W/pol > $W/check.txt 2>&1 || fail "agentcgd check: $(cat $W/check.txt)"

# agent COMM SESSION FAMILY: start one, wait until it and all its children
# are in its own leaf SESSION/FAMILY-<pid>; prints the leaf.
agent() {
    $W/bin/$1 $(($(nproc) * PER_CPU)) & a=$!
    AGENTS="$AGENTS $a"
    l=$2/$3-$a
    i=0
    until [ "$(cg $a)" = /agentcg/$l ] && [ "$(wc -l < $R/$l/cgroup.procs)" = $(($(nproc) * PER_CPU + 1)) ]; do
        i=$((i + 1)); [ $i -gt 300 ] && fail "agent $3 ($a) not placed whole in $l: $(cg $a), $(cat $R/$l/cgroup.procs 2>/dev/null | tr '\n' ' ')"
        usleep 20000
    done
    LEAF=agentcg/$l
}

phase() { # NAME [DAEMON ARGS]
    name=$1; shift
    rm -f /run/agentcgd/state.json
    agentcgd --policies $W/pol "$@" $R > $W/log 2>&1 & D=$!
    i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i + 1)); [ $i -gt 900 ] && fail "no state file"; usleep 100000; done
    if [ "$name" = agentcg ]; then
        wait_state enabled 30 || fail "agentcgd did not load the scheduler (state $(cat $SX/state))"
        [ "$(cat $SX/root/ops)" = agentcg ] || fail "ops $(cat $SX/root/ops)"
    else
        [ "$(cat $SX/state)" = disabled ] || fail "sched_ext state $(cat $SX/state) with --no-scheduler"
    fi
    agent agentcg-w3 session_high lw-heavy; heavy=$LEAF
    agent agentcg-w1 session_high lw-light; light=$LEAF
    [ "$(cat $CG/$heavy/cpu.weight)" = 300 ] || fail "$heavy cpu.weight $(cat $CG/$heavy/cpu.weight)"
    [ "$(cat $CG/$light/cpu.weight)" = 100 ] || fail "$light cpu.weight $(cat $CG/$light/cpu.weight)"
    sleep $WARM
    echo "$name: two agents in session_high (cpu_weight 300 and 100)"
    ratio $heavy $light 3 || fail "$name: lw-heavy:lw-light leaves are not 3:1 within $TOL$(left)"

    agent agentcg-w1 session_high lw-light; light2=$LEAF
    agent agentcg-wl session_low lw-bg; bg=$LEAF
    [ "$(cat $CG/$bg/cpu.weight)" = 100 ] || fail "$bg cpu.weight $(cat $CG/$bg/cpu.weight)"
    sleep $WARM
    echo "$name: three agents in session_high, one in session_low (sessions 150:50)"
    h0=$(usage $heavy); l0=$(usage $light); m0=$(usage $light2)
    ratio agentcg/session_high agentcg/session_low 3 || fail "$name: session_high:session_low is not 3:1 within $TOL with 3+1 agents$(left)"
    h1=$(usage $heavy); l1=$(usage $light); m1=$(usage $light2)
    # Same window: lw-heavy against the mean of the two lw-light leaves.
    awk -v h=$((h1 - h0)) -v l=$((l1 - l0 + m1 - m0)) -v tol=$TOL 'BEGIN {
        r = 2 * h / l; dev = (r - 3) / 3; if (dev < 0) dev = -dev
        printf "%-28s cpu_ms %d:%d ratio %.3f target 3.000 deviation %.2f%%\n", "heavy:mean(light x2)", h / 1000, l / 2000, r, dev * 100
        exit (dev <= tol) ? 0 : 1 }' || fail "$name: lw-heavy is not 3x each lw-light leaf within $TOL with 3+1 agents$(left)"
    [ "$name" = agentcg ] && { alive_sched || fail "scheduler left during the measurement$(left)"; }
    stop_all
    kill -TERM $D; wait $D; D=
    wait_state disabled 10 || fail "state $(cat $SX/state) after agentcgd stopped"
}
alive_sched() { [ "$(cat $SX/state)" = enabled ] && ! dmesg | grep -q 'sched_ext: .*disabled'; }
# left: for a failure message, what the kernel said if it took the
# scheduler down in this phase (the measurement then covers a gap)
left() {
    [ "$name" = agentcg ] && ! alive_sched || return 0
    printf '; the kernel took the scheduler down: %s' "$(dmesg | grep 'sched_ext: ' | tail -n 2 | tr '\n' ' ')"
}

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
for p in $PHASES; do
    IFS=: read -r name PER_CPU TOL <<P
$p
P
    PER_CPU=${PER_CPU:-1} TOL=${TOL:-0.05}
    echo "--- $name: $PER_CPU busy children per CPU per agent, tolerance $TOL"
    case $name in agentcg) phase agentcg;; kernel) phase kernel --no-scheduler;; *) fail "unknown phase $p";; esac
done
echo "PASS: agents' leaves split session_high by their cpu_weight (3:1) and the sessions keep 3:1 with 3+1 agents ($PHASES)"
