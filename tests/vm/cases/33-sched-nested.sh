#!/bin/sh
# 33-sched-nested: a three-level tree splits the CPU by its flattened shares
#   t33 + a (200) + x (100)   x: 200/300 * 100/400 = 1/6
#       |         \ y (300)   y: 200/300 * 300/400 = 1/2
#       \ b (100)             b: 100/300           = 1/3
# each leaf's share of the CPU time within 5% (relative) of its target.
. /vm/lib/sched.sh

# shares CG:TARGET...: measure over WINDOW s, print, check each within TOL
shares() {
    before=; for s in "$@"; do before="$before $(usage ${s%%:*})"; done
    sleep $WINDOW
    after=; for s in "$@"; do after="$after $(usage ${s%%:*})"; done
    echo "$*" "|" $before "|" $after | awk -v tol=$TOL '{
        n = 0; while ($(n + 1) != "|") n++
        total = 0
        for (i = 1; i <= n; i++) { d[i] = $(2 * n + 2 + i) - $(n + 1 + i); total += d[i] }
        if (total <= 0) { print "no CPU time measured"; exit 1 }
        bad = 0; max = 0
        for (i = 1; i <= n; i++) {
            split($i, kv, ":"); t = kv[2] + 0
            if (kv[2] ~ /\//) { split(kv[2], f, "/"); t = f[1] / f[2] }
            s = d[i] / total; dev = (s - t) / t; if (dev < 0) dev = -dev
            if (dev > max) max = dev
            if (dev > tol) bad = 1
            printf "%-14s cpu_ms %6d share %.4f target %.4f deviation %.2f%%\n", kv[1], d[i] / 1000, s, t, dev * 100
        }
        printf "max deviation %.2f%%\n", max * 100
        exit bad }'
}

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
echo +cpu > $CG/cgroup.subtree_control || fail "cannot enable the cpu controller"
mkdir -p $CG/t33 && echo +cpu > $CG/t33/cgroup.subtree_control
mkdir -p $CG/t33/a $CG/t33/b && echo +cpu > $CG/t33/a/cgroup.subtree_control
mkdir -p $CG/t33/a/x $CG/t33/a/y
echo 200 > $CG/t33/a/cpu.weight
echo 100 > $CG/t33/b/cpu.weight
echo 100 > $CG/t33/a/x/cpu.weight
echo 300 > $CG/t33/a/y/cpu.weight

scx_agentcg -i 1 >/tmp/scx33.log 2>&1 &
SCHED=$!
wait_state enabled 30 || { cat /tmp/scx33.log; fail "scheduler did not attach"; }
echo "attached: $(cat $SX/root/ops), $NCPU CPUs, window ${WINDOW}s"

hogs t33/a/x $NCPU
hogs t33/a/y $NCPU
hogs t33/b $NCPU
sleep $WARM
shares t33/a/x:1/6 t33/a/y:1/2 t33/b:1/3 || fail "nested tree not within 5% of its flattened shares"

kill -0 $SCHED 2>/dev/null || { cat /tmp/scx33.log; fail "scheduler exited"; }
cleanup
echo "PASS 33-sched-nested"
