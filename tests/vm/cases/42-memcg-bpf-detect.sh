#!/bin/sh
# 42-memcg-bpf-detect: the BPF backend's load path up to the BTF check on the
# real kernel: the memcg_priority BPF object opens (it is built by every
# build) and detection says memcg_bpf_ops is not in this kernel's BTF, naming
# it. The controller then runs the fallback and says why; with
# `backend: bpf` it is off with the same reason. Stopping restores files.
# The same through the daemon: `agentcgd status --json` shows the backend
# line, and `memcg: {backend: bpf}` in agentcgd.yaml leaves it off, saying why.
CG=/sys/fs/cgroup
R=$CG/agentcg42
W=/tmp/t42
mkdir -p $W
# agentcg-memcg-demo: on PATH, or brought in by --with at its host path.
DEMO=$(command -v agentcg-memcg-demo || ls /*/*/target/x86_64-unknown-linux-gnu/release/agentcg-memcg-demo \
       /*/target/x86_64-unknown-linux-gnu/release/agentcg-memcg-demo 2>/dev/null | head -1)
fail() { echo "FAIL: $*"; exit 1; }

p=$($DEMO probe) || fail "probe failed: $p"
echo "probe: $p"
echo "$p" | grep -q '"available":false' || fail "memcg_bpf_ops unexpectedly available on $(uname -r)"
echo "$p" | grep -q 'no struct memcg_bpf_ops' || fail "reason does not name memcg_bpf_ops"
echo "$p" | grep -q 'high_below_low' || fail "BPF object lacks its struct_ops programs"

echo +memory > $CG/cgroup.subtree_control || fail "cannot enable memory"
mkdir -p $R && echo +memory > $R/cgroup.subtree_control && mkdir -p $R/session_high $R/session_low || fail "tree"
echo 1 > $R/session_high/memory.oom.group

$DEMO run $R > $W/auto.log 2>&1 & c=$!
i=0; until grep -q started $W/auto.log; do i=$((i+1)); [ $i -gt 100 ] && fail "no start"; usleep 50000; done
kill -TERM $c; wait $c
cat $W/auto.log
grep -q '"backend":"fallback: psi+memory.events (kernel BTF has no struct memcg_bpf_ops' $W/auto.log ||
    fail "auto backend is not 'fallback: psi+memory.events (<why not bpf>)'"
grep -q '"psi":true' $W/auto.log || fail "PSI trigger not armed"
[ "$(cat $R/session_high/memory.oom.group)" = 1 ] || fail "memory.oom.group of session_high not restored"

printf 'backend: bpf\n' > $W/bpf.yaml
$DEMO run $R --config $W/bpf.yaml > $W/bpf.log 2>&1 & c=$!
i=0; until grep -q started $W/bpf.log; do i=$((i+1)); [ $i -gt 100 ] && fail "no start"; usleep 50000; done
kill -TERM $c; wait $c
grep -q '"backend":"off: memcg.backend: bpf but kernel BTF has no struct memcg_bpf_ops' $W/bpf.log ||
    fail "backend: bpf should be off with the reason: $(cat $W/bpf.log)"
# The daemon runs the same controller (shipped config; the scheduler is not
# what this case is about).
D=
# status --json is pretty-printed: one line, no blanks after "key":
compact() { sed 's/^ *//' | tr -d '\n' | sed 's/": /":/g'; }
dstat() { agentcgd status --json --state $W/state.json 2>/dev/null | compact; }
daemon_backend() { # CONFIG -> memcg backend line of the running daemon
    rm -f $W/state.json
    agentcgd $CG/agentcg --config $1 --state $W/state.json --no-scheduler > $W/d.log 2>&1 & D=$!
    i=0; until dstat | grep -q '"running":true'; do
        i=$((i+1)); [ $i -gt 200 ] && { kill $D; fail "agentcgd did not come up: $(cat $W/d.log)"; }; usleep 50000; done
    dstat | sed -n 's/.*"memcg":{[^}]*"backend":"\([^"]*\)".*/\1/p'
    kill -TERM $D; wait $D
}
b=$(daemon_backend /etc/agentcgd/agentcgd.yaml)
echo "agentcgd memcg: $b"
case $b in "fallback: psi+memory.events (kernel BTF has no struct memcg_bpf_ops"*) ;;
    *) fail "daemon's memcg backend is not the fallback with the reason: '$b' ($(cat $W/d.log))";; esac
printf 'memcg: {backend: bpf}\n' > $W/d-bpf.yaml
b=$(daemon_backend $W/d-bpf.yaml)
echo "agentcgd memcg (backend: bpf): $b"
case $b in "off: memcg.backend: bpf but kernel BTF has no struct memcg_bpf_ops"*) ;;
    *) fail "daemon with memcg.backend: bpf should be off with the reason: '$b'";; esac
echo "PASS: memcg_bpf_ops detected as absent on $(uname -r); fallback runs and says why (demo and daemon)"
