#!/bin/sh
# Guest side of tests/bench/sched-fairness (run in the VM by tests/vm/run).
# Fairness: CPU hogs in weighted cgroup trees, measured share of cgroup CPU
# time (cpu.stat usage_usec deltas) against the flattened target share,
# under the kernel's own scheduler and under scx_agentcg.
# Overhead: fork/exec, pipe ping-pong and hackbench-like workloads timed
# under both; wake-up latency (p50/p99) with and without hogs in
# session_low, under both.
# Prints "BENCH ..." lines that the host side turns into tables and JSON.
# CG, SX, WARM, WINDOW, HOGS, SCHED, wait_state, hogs and usage come from
# the scheduler cases' shared helpers.
. /vm/lib/sched.sh
NCPU=$(nproc)
die() { echo "bench: $*"; stop_hogs; stop_sched; exit 1; }
stop_hogs() { for p in $HOGS; do kill -9 $p 2>/dev/null; done; for p in $HOGS; do wait $p 2>/dev/null; done; HOGS=; }
stop_sched() { [ -n "$SCHED" ] && kill $SCHED 2>/dev/null && wait $SCHED 2>/dev/null; SCHED=; wait_state disabled 10; }
start_sched() {
    scx_agentcg >/tmp/bench-scx.log 2>&1 &
    SCHED=$!
    wait_state enabled 30 || { cat /tmp/bench-scx.log; die "scx_agentcg did not attach"; }
}
mkcg() { # PATH WEIGHT: create under an existing parent, cpu enabled there
    parent=${1%/*}
    [ "$parent" = "$1" ] && parent=.
    [ -d $CG/$parent ] || die "mkcg $1: create $parent first"
    echo +cpu > $CG/$parent/cgroup.subtree_control || die "cannot enable cpu in $parent"
    mkdir -p $CG/$1 && echo $2 > $CG/$1/cpu.weight || die "cannot set $1 cpu.weight"
}
# fair SCHEDNAME WORKLOAD CG:TARGET...: hogs in each leaf, measure, report
fair() {
    sched=$1 wl=$2; shift 2
    for s in "$@"; do hogs ${s%%:*} $NCPU; done
    sleep $WARM
    before=; for s in "$@"; do before="$before $(usage ${s%%:*})"; done
    sleep $WINDOW
    after=; for s in "$@"; do after="$after $(usage ${s%%:*})"; done
    stop_hogs
    echo "$*" "|" $before "|" $after | awk -v sched=$sched -v wl=$wl '{
        n = 0; while ($(n + 1) != "|") n++
        total = 0
        for (i = 1; i <= n; i++) { d[i] = $(2 * n + 2 + i) - $(n + 1 + i); total += d[i] }
        for (i = 1; i <= n; i++) {
            split($i, kv, ":"); t = kv[2] + 0
            if (kv[2] ~ /\//) { split(kv[2], f, "/"); t = f[1] / f[2] }
            s = total > 0 ? d[i] / total : 0; dev = (s - t) / t * 100
            printf "BENCH fair %s %s %s %.5f %.5f %.2f\n", sched, wl, kv[1], t, s, dev
        }}'
}
setup() {
    echo +cpu > $CG/cgroup.subtree_control || die "no cpu controller"
    mkcg bf 100
    mkcg bf/flat 100; mkcg bf/flat/high 150; mkcg bf/flat/low 50
    mkcg bf/eq 100; mkcg bf/eq/a 100; mkcg bf/eq/b 100
    mkcg bf/three 100; mkcg bf/three/a 300; mkcg bf/three/b 200; mkcg bf/three/c 100
    mkcg bf/nest 100; mkcg bf/nest/a 200; mkcg bf/nest/b 100; mkcg bf/nest/a/x 100; mkcg bf/nest/a/y 300
    mkcg bf/sh 150; mkcg bf/sl 50
    for c in flat/high flat/low three/a nest/a/y; do echo "weight bf/$c: $(cat $CG/bf/$c/cpu.weight)"; done
}
fairness() { # SCHEDNAME
    fair $1 flat-150:50 bf/flat/high:3/4 bf/flat/low:1/4
    fair $1 flat-100:100 bf/eq/a:1/2 bf/eq/b:1/2
    fair $1 flat-300:200:100 bf/three/a:1/2 bf/three/b:1/3 bf/three/c:1/6
    fair $1 nested-3-level bf/nest/a/x:1/6 bf/nest/a/y:1/2 bf/nest/b:1/3
}
now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
SB=${SCHEDBENCH:-agentcg-schedbench}
sec_to_ms() { awk '{ printf "%d\n", $1 * 1000 }'; }
# overhead workloads: print elapsed milliseconds
wl_forkexec() { t0=$(now_ms); i=0; while [ $i -lt ${FORKS:-500} ]; do /bin/true; i=$((i + 1)); done; echo $(($(now_ms) - t0)); }
wl_pipe() { $SB pipe ${ROUNDS:-20000} | sec_to_ms; }
wl_hackbench() { $SB hackbench ${HB_GROUPS:-2} ${HB_LOOPS:-100} | sec_to_ms; }
WORKLOADS="forkexec pipe hackbench"
# run_wl SCHEDNAME: every workload once; keeps the best time per scheduler
# in OV_<sched>_<wl>
run_wl() {
    for w in $WORKLOADS; do
        t=$(wl_$w) || die "workload $w failed"
        eval "best=\$OV_$1_$w"
        [ -z "$best" ] || [ $t -lt $best ] && eval "OV_$1_$w=$t"
        echo "overhead $1 $w: $t ms"
    done
}
# wake-up latency of WORKERS threads in session_high, woken every 2 ms for
# LAT_S s, without and with nproc CPU hogs in session_low
latency() { # SCHEDNAME
    for load in idle hogs; do
        [ $load = hogs ] && hogs bf/sl $NCPU && sleep 1
        r=$(sh -c "echo \$\$ > $CG/bf/sh/cgroup.procs; exec $SB wakeup ${LAT_S:-4} ${WORKERS:-4}") || die "wakeup failed"
        [ $load = hogs ] && stop_hogs
        echo "BENCH latency $load $1 $r"
    done
}

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || die "sched_ext not available/disabled"
echo "BENCH info kernel $(uname -r) cpus $NCPU warm $WARM window $WINDOW"
setup
echo "== fairness: kernel scheduler"
fairness kernel
echo "== fairness: scx_agentcg"
start_sched
echo "BENCH info ops $(cat $SX/root/ops)"
fairness agentcg
stop_sched

echo "== overhead and latency"
# kernel and scx_agentcg alternate, three rounds, so that a change in the
# host's load hits both alike; the best of 3 per scheduler is reported
for r in 1 2 3; do
    run_wl kernel
    start_sched
    run_wl agentcg
    stop_sched
done
latency kernel
start_sched
latency agentcg
stop_sched
latency kernel
for w in $WORKLOADS; do
    eval "k=\$OV_kernel_$w s=\$OV_agentcg_$w"
    awk -v w=$w -v k=$k -v s=$s 'BEGIN { printf "BENCH overhead %s %.3f %.3f %.3f\n", w, k / 1000, s / 1000, (k > 0 ? s / k : 0) }'
done
echo "bench: done"
