#!/bin/sh
# Guest side of tests/bench/sched-fairness (run in the VM by tests/vm/run).
# Fairness: CPU hogs in weighted cgroup trees, measured share of cgroup CPU
# time (cpu.stat usage_usec deltas) against the flattened target share,
# under the kernel's own scheduler and under scx_agentcg.
# Overhead: fork/exec, pipe ping-pong and hackbench-like workloads timed
# under both; wake-up latency (p50/p99) with and without hogs in
# session_low, under both (and under agentcg-schedfloor, sched_ext's floor,
# when SCHEDFLOOR names it).
# Prints "BENCH ..." lines that the host side turns into tables and JSON.
# CG, SX, WARM, WINDOW, HOGS, SCHED, wait_state, hogs, usage and mkcg come
# from the scheduler cases' shared helpers.
. /vm/lib/sched.sh
NCPU=$(nproc)
die() { echo "bench: $*"; stop_hogs; stop_sched; exit 1; }
stop_hogs() { for p in $HOGS; do kill -9 $p 2>/dev/null; done; for p in $HOGS; do wait $p 2>/dev/null; done; HOGS=; }
stop_sched() { [ -n "$SCHED" ] && kill $SCHED 2>/dev/null && wait $SCHED 2>/dev/null; SCHED=; CUR=kernel; wait_state disabled 10; }
start_sched() {
    scx_agentcg >/tmp/bench-scx.log 2>&1 &
    SCHED=$!
    CUR=agentcg
    wait_state enabled 30 || { cat /tmp/bench-scx.log; die "scx_agentcg did not attach"; }
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
wl_hackbench() { $SB hackbench ${HB_GROUPS:-2} ${HB_LOOPS:-400} | sec_to_ms; }
WORKLOADS="forkexec pipe hackbench"
# floor: agentcg-schedfloor (bpf/schedfloor.bpf.c), the thinnest sched_ext
# scheduler, run beside the two when it is there: what sched_ext itself costs
FLOOR=${SCHEDFLOOR:-}
[ -n "$FLOOR" ] && [ -x "$FLOOR" ] || FLOOR=
SCHEDS="kernel agentcg${FLOOR:+ floor}"
start_floor() {
    $FLOOR >/tmp/bench-floor.log 2>&1 &
    SCHED=$!
    wait_state enabled 30 || { cat /tmp/bench-floor.log; die "agentcg-schedfloor did not attach"; }
}
# switch_to SCHEDNAME: attach or detach scx_agentcg or the floor as needed
CUR=kernel
switch_to() {
    [ $1 = $CUR ] && return 0
    [ -z "$SCHED" ] || stop_sched
    case $1 in agentcg) start_sched ;; floor) start_floor ;; esac
    CUR=$1
}
# rounds rotate the order (kernel, agentcg, floor | agentcg, floor, kernel
# | ...) so that a drift of the host's load hits all alike and one switch a
# round is saved; a ratio is taken within one round, and the median of the
# rounds' ratios is reported with their spread (min..max)
order() {
    set -- $(($1 - 1)) $SCHEDS
    k=$1; shift; n=$#
    i=0; while [ $i -lt $n ]; do eval "echo \${$(((k + i) % n + 1))}"; i=$((i + 1)); done | tr '\n' ' '
}
OVLOG=/tmp/bench-rounds.txt
: >$OVLOG
overhead() {
    r=1
    while [ $r -le ${OV_ROUNDS:-7} ]; do
        for s in $(order $r); do
            switch_to $s
            for w in $WORKLOADS; do
                t=$(wl_$w) || die "workload $w failed"
                echo "ov $r $w $s $t" >>$OVLOG
                echo "overhead round $r $s $w: $t ms"
            done
        done
        r=$((r + 1))
    done
}
# wake-up latency of WORKERS threads in session_high, woken every 2 ms for
# LAT_S s, without and with nproc CPU hogs in session_low
latency() {
    r=1
    while [ $r -le ${LAT_ROUNDS:-3} ]; do
        for s in $(order $r); do
            switch_to $s
            for load in idle hogs; do
                [ $load = hogs ] && hogs bf/sl $NCPU && sleep 1
                res=$(sh -c "echo \$\$ > $CG/bf/sh/cgroup.procs; exec $SB wakeup ${LAT_S:-3} ${WORKERS:-4}") || die "wakeup failed"
                [ $load = hogs ] && stop_hogs
                echo "lat $r $load $s $res" >>$OVLOG
                echo "latency round $r $s $load: $res"
            done
        done
        r=$((r + 1))
    done
}
# scx_agentcg's (and the floor's) own BPF time during the wake-up workload (a separate run:
# kernel.bpf_stats_enabled adds two clock reads to every program run, so it
# stays off while latency is measured). Per struct_ops program: runs and
# run time over the run, per measured wake-up.
bpf_totals() { # name run_cnt run_time_ns of each struct_ops program
    bpftool prog show 2>/dev/null | awk '/struct_ops/ { n = ""; t = 0; c = 0
        for (i = 1; i <= NF; i++) { if ($i == "name") n = $(i + 1); if ($i == "run_time_ns") t = $(i + 1); if ($i == "run_cnt") c = $(i + 1) }
        if (n != "") print n, c, t }'
}
bpfcost() { # SCHEDNAME
    command -v bpftool >/dev/null || { echo "bpfcost: no bpftool in the guest: skipped"; return 0; }
    [ "${COST_S:-2}" != 0 ] || { echo "bpfcost: COST_S=0: skipped"; return 0; }
    switch_to $1
    for load in idle hogs; do
        [ $load = hogs ] && hogs bf/sl $NCPU && sleep 1
        bpf_totals >/tmp/bpf-before.txt
        sysctl -w kernel.bpf_stats_enabled=1 >/dev/null
        res=$(sh -c "echo \$\$ > $CG/bf/sh/cgroup.procs; exec $SB wakeup ${COST_S:-2} ${WORKERS:-4}") || die "wakeup failed"
        sysctl -w kernel.bpf_stats_enabled=0 >/dev/null
        bpf_totals >/tmp/bpf-after.txt
        [ $load = hogs ] && stop_hogs
        set -- $res
        awk -v load=$load -v n=$3 'NR == FNR { c0[$1] = $2; t0[$1] = $3; next }
            { dc = $2 - c0[$1]; dt = $3 - t0[$1]
              if (dc > 0) printf "BENCH bpfcost %s %s %d %.0f %.3f %.2f\n", load, $1, dc, dt / dc, dc / n, dt / n / 1000 }' \
            /tmp/bpf-before.txt /tmp/bpf-after.txt
    done
}
# summary: medians over rounds and the median of same-round ratios
summary() {
    awk 'function med(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        function mm(a, n, lo,   i, v) { v = a[1]; for (i = 2; i <= n; i++) if (lo ? a[i] < v : a[i] > v) v = a[i]; return v }
        $1 == "ov" { t[$2, $3, $4] = $5; if (!($3 in seen)) { seen[$3] = 1; wl[++nw] = $3 } if ($2 > nr) nr = $2 }
        $1 == "lat" { p50[$2, $3, $4] = $5; p99[$2, $3, $4] = $6; n[$3, $4] += $7; cy[$3, $4] += $8; bu[$2, $3, $4] = $9; if ($2 > nl) nl = $2 }
        END {
            for (i = 1; i <= nw; i++) {
                w = wl[i]; m = 0
                for (r = 1; r <= nr; r++) if (t[r, w, "kernel"] > 0 && t[r, w, "agentcg"] > 0) {
                    m++; k[m] = t[r, w, "kernel"]; a[m] = t[r, w, "agentcg"]; q[m] = a[m] / k[m]; q2[m] = q[m]
                }
                if (!m) continue
                lo = mm(q2, m, 1); hi = mm(q2, m, 0)
                printf "BENCH overhead %s %.3f %.3f %.3f %.3f %.3f %d\n", w, med(k, m) / 1000, med(a, m) / 1000, med(q, m), lo, hi, m
                m = 0
                for (r = 1; r <= nr; r++) if (t[r, w, "kernel"] > 0 && t[r, w, "agentcg"] > 0 && t[r, w, "floor"] > 0) {
                    m++; f[m] = t[r, w, "floor"]; fk[m] = f[m] / t[r, w, "kernel"]; af[m] = t[r, w, "agentcg"] / f[m]
                }
                if (m) printf "BENCH floor_overhead %s %.3f %.3f %.3f %d\n", w, med(f, m) / 1000, med(fk, m), med(af, m), m
            }
            split("idle hogs", loads, " ")
            for (i = 1; i <= 2; i++) {
                l = loads[i]; m = 0
                for (r = 1; r <= nl; r++) if (p50[r, l, "kernel"] > 0 && p50[r, l, "agentcg"] > 0) {
                    m++; k5[m] = p50[r, l, "kernel"]; a5[m] = p50[r, l, "agentcg"]; k9[m] = p99[r, l, "kernel"]; a9[m] = p99[r, l, "agentcg"]
                    q5[m] = a5[m] / k5[m]; q9[m] = a9[m] / k9[m]; c5[m] = q5[m]; c9[m] = q9[m]
                    kb[m] = bu[r, l, "kernel"]; ab[m] = bu[r, l, "agentcg"]
                }
                if (!m) continue
                printf "BENCH latency %s kernel %d %d %d %d %d\n", l, med(k5, m), med(k9, m), n[l, "kernel"], cy[l, "kernel"], med(kb, m)
                printf "BENCH latency %s agentcg %d %d %d %d %d\n", l, med(a5, m), med(a9, m), n[l, "agentcg"], cy[l, "agentcg"], med(ab, m)
                printf "BENCH latratio %s %.3f %.3f %.3f %.3f %.3f %.3f %d\n", l, med(q5, m), mm(c5, m, 1), mm(c5, m, 0), med(q9, m), mm(c9, m, 1), mm(c9, m, 0), m
                m = 0
                for (r = 1; r <= nl; r++) if (p50[r, l, "kernel"] > 0 && p50[r, l, "agentcg"] > 0 && p50[r, l, "floor"] > 0) {
                    m++; f5[m] = p50[r, l, "floor"]; f9[m] = p99[r, l, "floor"]; fb[m] = bu[r, l, "floor"]
                    fk5[m] = f5[m] / p50[r, l, "kernel"]; fk9[m] = f9[m] / p99[r, l, "kernel"]
                    af5[m] = p50[r, l, "agentcg"] / f5[m]; af9[m] = p99[r, l, "agentcg"] / f9[m]
                }
                if (!m) continue
                printf "BENCH latency %s floor %d %d %d %d %d\n", l, med(f5, m), med(f9, m), n[l, "floor"], cy[l, "floor"], med(fb, m)
                printf "BENCH floor_latratio %s %.3f %.3f %.3f %.3f %d\n", l, med(fk5, m), med(fk9, m), med(af5, m), med(af9, m), m
            }
        }' $OVLOG
}

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || die "sched_ext not available/disabled"
echo "BENCH info kernel $(uname -r) cpus $NCPU warm $WARM window $WINDOW"
setup
SECTIONS=${SECTIONS:-fairness overhead latency}
case " $SECTIONS " in *" fairness "*)
    echo "== fairness: kernel scheduler"
    fairness kernel
    echo "== fairness: scx_agentcg"
    start_sched
    echo "BENCH info ops $(cat $SX/root/ops)"
    fairness agentcg
    stop_sched
esac
case " $SECTIONS " in *" overhead "*) echo "== overhead"; overhead ;; esac
case " $SECTIONS " in *" latency "*)
    echo "== latency"; latency
    echo "== BPF cost"; bpfcost agentcg; [ -z "$FLOOR" ] || bpfcost floor ;;
esac
switch_to kernel
summary
echo "bench: done"
