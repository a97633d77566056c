#!/bin/sh
# vm-env: VM_MEM_MB=2048
# 41-memcg-protect: the tight-memory experiment of the AgentCgroup study,
# scaled to the VM. HIGH (all_images_haiku/dask__dask-11628) in
# a leaf of agentcg/session_high and two LOW
# (all_images_haiku/sigmavirus24__github3.py-673) in leaves of
# agentcg/session_low, replayed by agentcg-replay at 50x, share
# agentcg/memory.max = LIMIT_MB, below the sum of their peaks (321 + 2 x 306
# MB; 700-820 MB whenever their bursts meet). Rounds alternate in one boot:
#
#   baseline  no daemon: the same tree (cpu+memory enabled down to the
#             leaves, cpu.weight 100 both), the same memory.max; the script
#             makes one leaf per replay as the daemon makes an agent's leaf
#             (session_*/baseline-<label>, memory.min/low max) and writes
#             its cgroup.procs itself; oom_score_adj 0.
#   agentcgd  the real daemon, `agentcgd /sys/fs/cgroup/agentcg` with the
#             shipped config and policies (scheduler on where the kernel has
#             sched_ext, memcg controller: fallback backend on this kernel).
#             The replays are placed by policy: HIGH runs as `claude`
#             (claude-code, high), each LOW as `aider` started with
#             AGENTCG_PRIORITY=low (aider is high by default); the daemon
#             also writes their oom_score_adj. Each replay is an agent of
#             its own: session_high/claude-code-<pid>, session_low/aider-<pid>.
#
# In both modes the replay binary is exec'd through a symlink with that name
# (comm claude / aider). Under agentcgd a small #! wrapper of the same name is
# exec'd first and waits until the daemon has moved it into its own agent
# leaf (and set its
# oom_score_adj) before it execs the replay: memory charged before placement
# would stay in the root cgroup, outside agentcg/memory.max.
#
# Pass: under agentcgd HIGH is never OOM-killed; the sched_ext scheduler
# the daemon loads is not ejected by the kernel (a stalled task); HIGH's
# median p95 allocation latency is no worse than baseline's within TCG
# noise (tolerance below; checked only when baseline HIGH completed in
# at least 3 rounds: it is often OOM-killed, and one round is noise).
# Every memory file of the tree that the daemon changed is back to its value
# once it has stopped.
#
# Usage (guest): 41-memcg-protect.sh [HIGH_CSV LOW_CSV [LIMIT_MB [ROUNDS [SPEED]]]]
# ROUNDS (default 5) per mode: baseline HIGH, the largest process, is often
# OOM-killed, and every round where it lives gives the latency comparison a
# sample; 5 rounds take ~80 s here.
# Without CSVs the two traces embedded below are used. One JSON line per
# session and round is printed prefixed "RESULT " (tests/bench/memcg-replay
# collects them); the daemon's log is printed on failure.
#        41-memcg-protect.sh --no-scheduler [...]: the daemon without its
#        sched_ext scheduler (memcg alone). By default the daemon runs as
#        shipped, scheduler included; it has been seen to strand a replay
#        for 40+ s until the kernel's watchdog ejected it, which fails the case.
# MODES (environment, default "baseline agentcgd"): the modes each round
# runs, in order. Besides baseline and agentcgd (shipped config, whatever
# backend the kernel allows): fallback and bpf, the daemon with the shipped
# config but `memcg: {backend: fallback|bpf}` (tests/bench/memcg-replay runs
# all three on the kernel with memcg_bpf_ops). Every daemon mode is held to
# the pass criteria above.
MODES=${MODES:-"baseline agentcgd"}
DAEMON_ARGS=
[ "$1" = --no-scheduler ] && { DAEMON_ARGS=--no-scheduler; shift; }
CG=/sys/fs/cgroup
R=$CG/agentcg
W=/tmp/t41
mkdir -p $W/bin $W/wrap
HIGH_T=${1:-$W/high.csv}
LOW_T=${2:-$W/low.csv}
LIMIT_MB=${3:-650}
ROUNDS=${4:-5}
SPEED=${5:-50}
D=
fail() {
    echo "FAIL: $*"
    for l in $W/d.*.log; do [ -r "$l" ] && { echo "--- $l (tail)"; tail -20 "$l"; }; done
    [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1
}
now_cs() { awk '{printf "%d", $1 * 100}' /proc/uptime; }
field() { # JSON KEY -> first value (numbers/bools)
    echo "$1" | sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" | head -1
}

if [ $# -lt 2 ]; then
cat > $W/high.csv <<'TRACE'
t_s,mem_mb,cpu_pct
0.00,11.96,117.65
1.04,185.50,66.25
2.09,180.70,48.06
3.14,181.10,32.67
4.19,182.10,25.23
5.24,182.60,20.63
6.30,183.90,17.75
7.34,187.10,15.79
8.38,187.70,14.12
9.43,157.70,13.99
10.48,160.20,12.91
11.53,161.70,12.13
12.58,161.70,11.13
13.63,161.80,10.41
14.68,162.50,9.86
15.71,163.00,9.34
16.76,167.70,8.99
17.81,167.70,8.53
18.85,166.00,8.26
19.90,165.50,7.92
20.95,166.20,7.80
22.03,167.20,7.53
23.07,171.00,7.40
24.12,170.20,7.14
25.16,171.20,7.19
26.20,171.50,6.97
27.25,176.00,6.90
28.29,198.20,7.14
29.33,177.50,14.31
30.38,177.50,13.85
31.43,184.50,13.79
32.48,186.60,13.45
33.52,187.60,13.22
34.55,187.20,12.90
35.60,190.10,13.20
36.65,198.50,12.96
37.69,197.80,12.70
38.73,197.80,12.41
39.78,259.60,14.38
40.84,284.50,16.41
41.88,243.10,17.89
42.92,291.90,19.22
43.97,320.90,21.01
45.01,314.40,28.35
46.04,286.20,29.96
47.08,283.10,31.50
48.13,254.30,32.92
49.16,191.20,34.14
50.21,191.60,33.44
51.25,191.10,32.89
52.31,192.00,32.27
53.35,193.90,33.57
54.40,194.50,33.02
55.44,195.40,32.44
56.48,195.60,33.65
57.53,195.80,33.16
58.59,196.00,32.60
59.63,196.00,33.82
60.69,196.00,33.27
61.73,196.90,32.74
62.76,198.70,33.66
63.80,198.20,33.14
64.84,200.60,32.65
65.88,198.90,32.15
66.93,198.90,31.69
67.98,198.90,31.21
69.02,199.30,32.24
70.06,199.30,31.78
71.10,199.80,31.42
72.15,199.80,30.98
73.19,202.20,31.97
74.25,202.20,31.52
75.29,202.20,31.10
76.34,201.40,32.11
77.40,202.10,31.70
78.44,202.30,31.33
79.49,206.30,32.23
80.55,206.80,31.82
81.59,205.40,31.44
82.64,208.90,31.08
83.69,208.90,30.71
84.74,205.70,30.36
85.78,208.60,31.14
86.82,208.60,30.79
87.86,209.60,30.47
88.90,209.60,30.12
89.95,209.60,29.79
91.00,207.60,29.49
92.05,207.60,29.20
93.10,207.40,30.23
94.15,209.10,29.92
95.19,209.10,29.64
96.25,214.80,29.36
97.29,216.10,29.06
98.34,216.70,28.77
TRACE
cat > $W/low.csv <<'TRACE'
t_s,mem_mb,cpu_pct
0.00,12.50,104.72
1.04,184.70,63.56
2.08,193.10,46.18
3.11,195.10,32.82
4.15,195.20,24.88
5.18,195.20,20.50
6.22,195.40,17.48
7.26,193.30,16.14
8.30,193.40,14.31
9.34,194.50,13.10
10.40,194.50,11.91
11.44,196.40,11.04
12.48,196.40,10.17
13.52,196.50,9.46
14.55,196.60,8.90
15.59,159.30,8.80
16.63,158.80,8.67
17.66,164.50,8.35
18.70,166.00,8.01
19.73,166.00,7.63
20.76,165.00,7.29
21.80,164.40,7.00
22.83,164.90,6.72
23.86,166.00,6.47
24.90,166.10,6.31
25.93,166.10,6.17
26.97,166.10,5.96
28.00,166.20,5.79
29.04,167.20,5.71
30.07,167.60,5.56
31.10,168.60,5.45
32.15,230.20,7.94
33.18,170.60,9.15
34.22,170.60,8.89
35.26,175.00,8.78
36.30,177.10,8.62
37.33,177.50,8.39
38.37,178.00,8.31
39.41,176.90,8.29
40.45,185.30,8.23
41.49,245.80,9.93
42.53,187.30,10.13
43.57,186.40,10.04
44.60,186.80,9.84
45.63,189.70,9.67
46.67,189.70,9.46
47.71,198.90,9.37
48.75,199.50,9.23
49.79,199.70,9.14
50.82,204.10,9.01
51.86,204.50,8.83
52.90,247.80,9.43
53.94,295.90,11.21
54.98,299.40,12.90
56.01,299.40,14.51
57.05,299.40,16.09
58.08,299.40,17.61
59.12,298.40,19.06
60.14,298.70,20.46
61.18,298.70,21.82
62.22,298.70,23.21
63.25,298.70,24.47
64.27,205.80,24.79
65.31,206.30,24.47
66.35,208.30,24.15
67.39,208.30,23.78
68.42,208.30,23.44
69.46,208.30,23.09
70.50,206.80,22.80
71.53,206.80,22.49
72.56,206.80,22.17
73.60,207.20,21.89
74.64,207.20,21.61
75.67,273.10,22.59
76.72,305.40,23.66
77.76,305.40,24.69
78.80,305.40,25.69
79.83,305.50,26.67
80.86,305.50,27.61
81.90,305.50,28.54
82.93,305.50,29.43
83.97,305.50,30.32
85.01,304.40,31.18
86.04,208.30,31.54
87.08,208.30,31.17
88.12,208.30,30.81
89.16,208.30,30.48
90.20,208.30,30.13
91.23,208.30,29.80
92.26,208.30,29.48
93.31,208.30,29.16
94.34,208.30,28.85
95.38,212.40,28.58
96.42,214.10,28.29
97.46,215.10,28.01
98.50,215.90,27.72
99.54,217.20,27.46
100.57,217.40,27.20
101.60,217.40,26.94
102.71,0.00,0.00
TRACE
fi
for f in "$HIGH_T" "$LOW_T"; do [ -r "$f" ] || fail "trace $f not readable"; done
REPLAY=$(command -v agentcg-replay) || fail "agentcg-replay not on PATH"
command -v agentcgd >/dev/null || fail "agentcgd not on PATH"
agentcgd check > $W/check.txt || fail "agentcgd check: $(cat $W/check.txt)"
grep -q 'claude-code -> session_high' $W/check.txt && grep -q 'aider -> session_high' $W/check.txt ||
    fail "shipped policies do not put claude-code and aider in session_high: $(cat $W/check.txt)"

# The tree as the daemon builds it, so that baseline differs only by the daemon.
echo +memory > $CG/cgroup.subtree_control || fail "cannot enable the memory controller"
echo +cpu > $CG/cgroup.subtree_control 2>/dev/null
mkdir -p $R
echo $((LIMIT_MB * 1000000)) > $R/memory.max || fail "cannot set memory.max"
echo +memory > $R/cgroup.subtree_control || fail "cannot enable memory in agentcg"
echo +cpu > $R/cgroup.subtree_control 2>/dev/null
mkdir -p $R/session_high $R/session_low
# The sessions hold only leaves (per-agent leaves, the daemon's default).
for s in session_high session_low; do
    echo +memory > $R/$s/cgroup.subtree_control || fail "cannot enable memory in $s"
    echo +cpu > $R/$s/cgroup.subtree_control 2>/dev/null
done
[ -e $R/session_high/memory.pressure ] || fail "no PSI (memory.pressure missing)"
echo "kernel $(uname -r), $(awk '/MemTotal/{print $2/1024 " MB"}' /proc/meminfo) RAM;" \
     "agentcg/memory.max=${LIMIT_MB} MB, speed ${SPEED}x, $ROUNDS rounds per mode"
echo "HIGH $HIGH_T; LOW x2 $LOW_T"

# NAME -> the replay with comm NAME; wrap/NAME waits for the daemon's placement.
for n in claude aider; do
    ln -sf "$REPLAY" $W/bin/$n
    cat > $W/wrap/$n <<WRAP
#!/bin/sh
# \$1 = session/family whose leaf for us (<family>-<our pid>) the daemon
# must put us in, \$2 = label; the rest: replay args.
want=\$1-\$\$ label=\$2; shift 2
i=0
while :; do
    read cg < /proc/\$\$/cgroup
    case \$cg in 0::/agentcg/\$want) break;; esac
    i=\$((i + 1)); [ \$i -gt 2000 ] && { echo "not placed: \$cg" > $W/unplaced.\$label; exit 99; }
    usleep 5000
done
i=0; while [ "\$(cat /proc/\$\$/oom_score_adj)" = 0 ] && [ \$i -lt 200 ]; do i=\$((i + 1)); usleep 5000; done
echo "\$cg adj \$(cat /proc/\$\$/oom_score_adj)" > $W/placed.\$label
exec $W/bin/$n "\$@"
WRAP
    chmod +x $W/wrap/$n
done

# Memory files of the tree, to check the daemon restores what it changes.
memfiles() {
    for d in $R $R/session_high $R/session_low; do
        for f in memory.min memory.low memory.high memory.max memory.oom.group; do
            echo "${d#$CG/}/$f=$(cat $d/$f)"
        done
    done
}

# run_one MODE LABEL NAME SESSION TRACE
run_one() {
    rm -f $W/placed.$2 $W/unplaced.$2
    args="--trace $5 --speed $SPEED --json --label $2"
    if [ $1 != baseline ]; then
        case $3 in claude) fam=claude-code;; *) fam=$3;; esac
        # The user's per-launch choice: AGENTCG_PRIORITY=high|low.
        AGENTCG_PRIORITY=${4#session_} $W/wrap/$3 $4/$fam $2 $args > $W/out.$2 2>&1 &
    else
        l=$R/$4/baseline-$2
        mkdir -p $l && echo max > $l/memory.min && echo max > $l/memory.low || fail "cannot make leaf $l"
        sh -c "echo \$\$ > $l/cgroup.procs && exec $W/bin/$3 $args" > $W/out.$2 2>&1 &
    fi
}

oomk() { sed -n 's/^oom_kill //p' $R/$1/memory.events; }
# status --json is pretty-printed: one line, no blanks after "key":
compact() { sed 's/^ *//' | tr -d '\n' | sed 's/": /":/g'; }
# sched_ext exits other than the daemon's own detach (watchdog: runnable task stall, BPF errors).
scx_errors() { dmesg | grep 'sched_ext: ' | grep -v 'unregistered from user space\|enabled\|registered'; }
status_json() { agentcgd status --json 2> /dev/null | compact; }

P95_B=""
round() { # MODE N
    mode=$1; n=$2
    if [ $mode != baseline ]; then
        memfiles > $W/mem.before
        scx_errors > $W/scx.before
        rm -f /run/agentcgd/state.json
        cfg=
        case $mode in fallback|bpf)
            cfg="--config $W/$mode.yaml"
            sed "s/^memcg:.*/memcg: {enabled: true, backend: $mode}/" /etc/agentcgd/agentcgd.yaml > $W/$mode.yaml
            grep -q "backend: $mode" $W/$mode.yaml || echo "memcg: {enabled: true, backend: $mode}" >> $W/$mode.yaml;;
        esac
        # shellcheck disable=SC2086
        agentcgd $R $DAEMON_ARGS $cfg > $W/d.$n.log 2>&1 & D=$!
        i=0; until status_json | grep -q '"running":true.*"memcg":{[^}]*"backend":"\(fallback\|bpf\|off\)'; do
            i=$((i + 1)); [ $i -gt 600 ] && fail "agentcgd did not come up with a memcg backend: $(status_json | head -c 800)"
            kill -0 $D 2>/dev/null || fail "agentcgd exited"; usleep 50000; done
        st=$(status_json)
        be=$(echo "$st" | sed -n 's/.*"memcg":{[^}]*"backend":"\([^"]*\)".*/\1/p')
        case $mode:$be in agentcgd:fallback*|agentcgd:bpf*|fallback:fallback*|bpf:bpf*) ;;
            *) fail "$mode round $n: memcg backend is '$be'";; esac
        [ $n = 1 ] && echo "$mode: memcg $be;" \
            "scheduler $(cat /sys/kernel/sched_ext/state 2>/dev/null || echo n/a)"
    else
        # No daemon, no priorities: equal cpu weights, the kernel's own scheduler.
        for s in session_high session_low; do [ -e $R/$s/cpu.weight ] && echo 100 > $R/$s/cpu.weight; done
        i=0; while [ -r /sys/kernel/sched_ext/state ] && [ "$(cat /sys/kernel/sched_ext/state)" != disabled ]; do
            i=$((i + 1)); [ $i -gt 100 ] && fail "sched_ext still $(cat /sys/kernel/sched_ext/state) without the daemon"; usleep 50000; done
    fi
    k0h=$(oomk session_high); k0l=$(oomk session_low)
    t0=$(now_cs)
    run_one $mode high claude session_high "$HIGH_T"; ph=$!
    run_one $mode low1 aider session_low "$LOW_T"; pl1=$!
    run_one $mode low2 aider session_low "$LOW_T"; pl2=$!
    wait $ph; rh=$?; wait $pl1; rl1=$?; wait $pl2; rl2=$?
    t1=$(now_cs)
    k1h=$(oomk session_high); k1l=$(oomk session_low)
    [ $mode = baseline ] && rmdir $R/session_high/baseline-high $R/session_low/baseline-low1 $R/session_low/baseline-low2
    for s in high low1 low2; do [ -e $W/unplaced.$s ] && fail "$mode round $n: $s $(cat $W/unplaced.$s)"; done
    if [ $mode != baseline ]; then
        adj_h=$(sed -n 's/.* adj //p' $W/placed.high); adj_l=$(sed -n 's/.* adj //p' $W/placed.low1)
        [ "$adj_h" -lt "$adj_l" ] 2>/dev/null || fail "oom_score_adj not steered: high '$adj_h' low '$adj_l'"
        usleep 300000   # one state write (200 ms) after the last event
        st=$(status_json)
        kill -TERM $D; wait $D; D=
        memfiles > $W/mem.after
        # A task stranded by the scheduler (the kernel's watchdog ejects it
        # after 30 s) is a failure of the daemon, whatever the latencies say.
        scx_errors > $W/scx.after
        cmp -s $W/scx.before $W/scx.after || fail "sched_ext scheduler failed during $mode round $n: $(diff $W/scx.before $W/scx.after | grep '^+[^+]')"
        diff $W/mem.before $W/mem.after > $W/mem.diff || fail "memory files not restored after agentcgd stopped: $(cat $W/mem.diff)"
        att=$(echo "$st" | grep -o '"oom_kills":\[[^]]*\]' | grep -o '"family":"[a-z-]*"' | sort | uniq -c | tr -s ' \n' ' ')
        bpfc=$(echo "$st" | sed -n 's/.*"bpf":{\([^}]*\)}.*/\1/p' | tr -d '"')
        echo "  $mode: episodes=$(field "$st" throttle_episodes) signals=$(field "$st" pressure_signals)${bpfc:+ bpf [$bpfc]}" \
             "oom_kill $(echo "$st" | sed -n 's/.*"oom_kill":{"high":\([0-9]*\),"low":\([0-9]*\).*/h=\1 l=\2/p')" \
             "attributed [${att:-none}] adj high=$adj_h low=$adj_l"
    fi
    survived=0
    for s in high low1 low2; do
        case $s in high) rc=$rh;; low1) rc=$rl1;; low2) rc=$rl2;; esac
        j=$(grep '^{' $W/out.$s | tail -1)
        [ $rc = 0 ] && [ -n "$j" ] || j=null
        [ $rc = 0 ] && survived=$((survived + 1))
        echo "RESULT {\"mode\":\"$mode\",\"round\":$n,\"session\":\"$s\",\"rc\":$rc,\"limit_mb\":$LIMIT_MB,\"round_s\":$(( (t1 - t0) / 100 )).$(( (t1 - t0) % 100 / 10 ))$(( (t1 - t0) % 10 )),\"replay\":$j}"
        if [ $s = high ]; then
            p95=$(field "$j" alloc_p95_ms)
            if [ $mode != baseline ]; then
                [ $rc = 0 ] && eval "P95_$mode=\"\$P95_$mode $p95\"" || eval "KILLED_$mode=\$((KILLED_$mode + 1))"
            else
                [ $rc = 0 ] && P95_B="$P95_B $p95"
            fi
        fi
    done
    echo "  $mode round $n: rc high=$rh low1=$rl1 low2=$rl2 survived $survived/3," \
         "oom_kill high+$((k1h - k0h)) low+$((k1l - k0l)), $(( (t1 - t0) / 100 )).$(( (t1 - t0) % 100 / 10 ))$(( (t1 - t0) % 10 ))s"
}

n=1
while [ $n -le $ROUNDS ]; do
    for m in $MODES; do round $m $n; done
    n=$((n + 1))
done

median() { echo "$@" | tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{if(NR==0)print ""; else print a[int((NR+1)/2)]}'; }
mb=$(median $P95_B)
# One baseline round where HIGH lived says little: its p95 alone ranged
# 105-391 ms across runs of one build. The comparison needs 3.
nb=$(echo $P95_B | wc -w)
echo "HIGH p95 alloc ms: baseline [$P95_B ] median ${mb:-none}"
summary=
for m in $MODES; do
    [ $m = baseline ] && continue
    eval "l=\$P95_$m k=\${KILLED_$m:-0}"
    ma=$(median $l)
    echo "HIGH p95 alloc ms: $m [$l ] median ${ma:-none}"
    [ $k = 0 ] || fail "HIGH was OOM-killed in $k $m round(s)"
# Tolerance: under single-threaded TCG one vCPU stall (the host scheduling
# qemu away, a timer batch) lands in whichever allocation step is running, and
# the p95 of HIGH's ~25 rising steps is its 2nd-slowest step, so one stall
# moves it by tens of ms. Medians over the rounds drop one bad round each
# side; x1.25 + 5 ms keeps a real regression (the daemon slowing HIGH down,
# e.g. by throttling the wrong session: 2x and more) a failure.
    if [ "$nb" -ge 3 ]; then
        awk -v a="$ma" -v b="$mb" 'BEGIN{exit !(a <= b * 1.25 + 5)}' ||
            fail "HIGH p95 under $m ($ma ms) worse than baseline ($mb ms) beyond x1.25 + 5 ms"
    fi
    summary="$summary $m ${ma} ms"
done
[ "$nb" -ge 3 ] || echo "note: baseline HIGH lived in $nb of $ROUNDS rounds: too few for a latency comparison (3 needed)"
echo "PASS: HIGH survived every daemon round; p95:$summary vs baseline ${mb:-killed}"
