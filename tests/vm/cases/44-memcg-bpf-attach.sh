#!/bin/sh
# vm-kernel: ../shared/kernels/vmlinuz-7.3.4-memcg-bpf-ops
# 44-memcg-bpf-attach: the BPF backend attached for real, on the kernel with
# the memcg_bpf_ops series (shared/kernels; the case is skipped, naming the
# file, where that image is missing). Through the daemon (shipped config,
# scheduler off: this case is about memory):
#  - `agentcgd status` says `bpf: memcg_bpf_ops`; `bpftool link` lists two
#    struct_ops links, and they are the daemon's (its /proc/PID/fdinfo);
#  - the ops are on the session cgroups: an agent's leaf the daemon creates
#    below session_low (session_low/aider-<pid>, for an aider started with
#    AGENTCG_PRIORITY=low) inherits them (handle_cgroup_online runs: status
#    bpf.online rises), and its removal once the agent has exited runs
#    handle_cgroup_offline;
#  - while the daemon holds the sessions, another loader's attach fails with
#    EBUSY and that controller falls back, saying why in its status;
#  - SIGTERM detaches: no struct_ops link is left, memory files restored;
#  - a restart attaches again;
#  - SIGKILL: the kernel closes the killed daemon's fds, which releases its
#    links (measured: struct_ops links before/after), and a restart
#    attaches again.
CG=/sys/fs/cgroup
R=$CG/agentcg
W=/tmp/t44
mkdir -p $W/bin
D=
fail() {
    echo "FAIL: $*"
    [ -r $W/d.log ] && { echo "--- daemon log (tail)"; tail -20 $W/d.log; }
    [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1
}
command -v bpftool > /dev/null || fail "bpftool missing in the guest (tests/vm/run copies the host's /usr/sbin/bpftool: apt-get install bpftool)"
grep -q memcg_bpf_ops /sys/kernel/btf/vmlinux || fail "kernel $(uname -r) has no memcg_bpf_ops in its BTF: wrong image"
DEMO=$(command -v agentcg-memcg-demo) || fail "agentcg-memcg-demo not on PATH"

# status --json is pretty-printed: one line, no blanks after "key":
compact() { sed 's/^ *//' | tr -d '\n' | sed 's/": /":/g'; }
dstat() { agentcgd status --json --state $W/state.json 2>/dev/null | compact; }
backend() { dstat | sed -n 's/.*"memcg":{[^}]*"backend":"\([^"]*\)".*/\1/p'; }
bpfc() { dstat | sed -n "s/.*\"bpf\":{[^}]*\"$1\":\([0-9]*\).*/\1/p"; }
ops_links() { bpftool link show 2>/dev/null | grep -c 'struct_ops'; }
fd_links() { # PID -> struct_ops link fds it holds
    grep -l 'link_type:.*struct_ops' /proc/$1/fdinfo/* 2>/dev/null | wc -l
}
memfiles() {
    for d in $R/session_high $R/session_low; do
        for f in memory.min memory.low memory.high memory.max memory.oom.group; do
            echo "${d#$CG/}/$f=$(cat $d/$f)"
        done
    done
}
start() {
    rm -f $W/state.json
    agentcgd $R --state $W/state.json --no-scheduler > $W/d.log 2>&1 & D=$!
    i=0; until dstat | grep -q '"running":true.*"memcg":{[^}]*"backend":"[a-z]'; do
        i=$((i + 1)); [ $i -gt 600 ] && fail "agentcgd did not come up: $(dstat | head -c 600)"
        kill -0 $D 2>/dev/null || fail "agentcgd exited"; usleep 50000; done
    b=$(backend)
    [ "$b" = "bpf: memcg_bpf_ops" ] || fail "$1: memcg backend is '$b', not 'bpf: memcg_bpf_ops'"
    n=$(ops_links); f=$(fd_links $D)
    echo "$1: backend '$b'; struct_ops links: $n in the kernel, $f held by agentcgd ($D)"
    [ "$n" = 2 ] && [ "$f" = 2 ] || { bpftool link show; fail "$1: expected 2 struct_ops links held by the daemon"; }
}
[ $(ops_links) = 0 ] || fail "struct_ops links before anything ran: $(bpftool link show)"

# The tree as the daemon builds it (it creates what is missing).
echo +memory > $CG/cgroup.subtree_control
mkdir -p $R && echo +memory > $R/cgroup.subtree_control && mkdir -p $R/session_high $R/session_low || fail "tree"
memfiles > $W/mem.before

start "start"
echo "--- bpftool link show"; bpftool link show | grep -A2 struct_ops
grep -h 'link_type\|link_id' $(grep -l 'link_type:.*struct_ops' /proc/$D/fdinfo/*) | tr '\n' ' '; echo

# Inheritance: an agent's leaf below session_low gets the ops (online
# hook). (A leaf has its own memcg because the daemon enables memory in
# the session's subtree_control for its leaves.)
grep -qw memory $R/session_low/cgroup.subtree_control || fail "memory not enabled for the leaves of session_low: $(cat $R/session_low/cgroup.subtree_control)"
on0=$(bpfc online); off0=$(bpfc offline)
mkfifo $W/fifo
printf '#!/bin/sh\nread x < %s\n' $W/fifo > $W/bin/aider; chmod +x $W/bin/aider
AGENTCG_PRIORITY=low $W/bin/aider & a=$!
i=0; until [ "$(sed -n 's/^0:://p' /proc/$a/cgroup)" = /agentcg/session_low/aider-$a ]; do
    i=$((i + 1)); [ $i -gt 200 ] && fail "aider ($a) not placed in session_low/aider-$a: $(cat /proc/$a/cgroup)"; usleep 20000; done
gt() { [ -n "$1" ] && [ "$1" -gt "$2" ] 2>/dev/null; }
i=0; until gt "$(bpfc online)" "$on0"; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "handle_cgroup_online not seen for leaf session_low/aider-$a (online $on0 -> $(bpfc online))"; usleep 50000; done
on1=$(bpfc online)
kill $a; wait $a 2>/dev/null
i=0; until [ ! -d $R/session_low/aider-$a ] && gt "$(bpfc offline)" "$off0"; do
    i=$((i + 1)); [ $i -gt 100 ] && fail "leaf aider-$a not removed / handle_cgroup_offline not seen (offline $off0 -> $(bpfc offline))"; usleep 50000; done
off1=$(bpfc offline)
echo "agent leaf session_low/aider-$a: handle_cgroup_online $on0 -> $on1, offline (leaf removed) $off0 -> $off1"

# A second loader on the same sessions: attach refused (EBUSY), fallback with the reason.
$DEMO run $R > $W/demo.log 2>&1 & c=$!
i=0; until grep -q '"started"' $W/demo.log; do i=$((i + 1)); [ $i -gt 400 ] && fail "demo did not start"; usleep 50000; done
kill -TERM $c; wait $c
st=$(grep '"status"' $W/demo.log)
echo "second loader: $(echo "$st" | sed -n 's/.*"backend":"\([^"]*\)".*/\1/p')"
echo "$st" | grep -q '"backend":"fallback: psi+memory.events (memcg_bpf_ops is in the kernel BTF but load/attach failed: .*busy' ||
    fail "second attach should fall back naming EBUSY: $st"
[ $(ops_links) = 2 ] || fail "the daemon's links changed after the failed second attach"

# SIGTERM: detach.
kill -TERM $D; wait $D; D=
n=$(ops_links)
echo "after SIGTERM: $n struct_ops links"
[ "$n" = 0 ] || { bpftool link show; fail "struct_ops links left after SIGTERM"; }
memfiles > $W/mem.after
diff $W/mem.before $W/mem.after || fail "memory files not restored after SIGTERM"

# Restart, then SIGKILL.
start "restart"
kill -KILL $D; wait $D 2>/dev/null; D=
i=0; n=$(ops_links)
while [ "$n" != 0 ] && [ $i -lt 40 ]; do usleep 50000; i=$((i + 1)); n=$(ops_links); done
echo "after SIGKILL: $n struct_ops links ($((i * 50)) ms after the daemon was reaped)"
[ "$n" = 0 ] || { bpftool link show; fail "struct_ops links survive the killed daemon"; }
start "restart after SIGKILL"
kill -TERM $D; wait $D; D=
[ $(ops_links) = 0 ] || fail "struct_ops links left after the last SIGTERM"
dmesg | grep 'BUG:\|WARNING:\|memcontrol bpf ops' && fail "kernel warnings (above)"
echo "PASS: BPF backend attached to session_high/session_low, inherited by an agent's leaf, detached on SIGTERM and on SIGKILL, re-attached on restart"
