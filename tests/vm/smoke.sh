#!/bin/sh
# tests/vm/smoke.sh: guest script asserting that the VM is what the VM tests
# rely on. Run it with at least one --with path:
#   tests/vm/run --with tests/vm/README.md tests/vm/smoke.sh
# Every --with path (listed by tests/vm/run in /vm/.with) and every PATH
# argument must be visible in the guest.
fails=0
ok()   { echo "smoke: ok   $*"; }
bad()  { echo "smoke: FAIL $*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    d=$1; shift
    if "$@" >/dev/null 2>&1; then ok "$d"; else bad "$d"; fi
}
mounted() { # mounted FSTYPE MOUNTPOINT
    awk -v t="$1" -v m="$2" '$2 == m && $3 == t { f = 1 } END { exit !f }' /proc/mounts
}

echo "smoke: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

state=$(cat /sys/kernel/sched_ext/state 2>/dev/null)
if [ "$state" = disabled ]; then ok "sched_ext state is disabled"
else bad "sched_ext state is '${state:-<missing /sys/kernel/sched_ext/state>}', want disabled"; fi

ctrls=$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)
for c in cpu memory; do
    case " $ctrls " in
        *" $c "*) ok "cgroup2 controller $c" ;;
        *) bad "cgroup2 controller $c missing (controllers: '$ctrls')" ;;
    esac
done

check "/sys/kernel/btf/vmlinux exists" test -s /sys/kernel/btf/vmlinux
check "cgroup2 mounted at /sys/fs/cgroup" mounted cgroup2 /sys/fs/cgroup
check "bpffs mounted at /sys/fs/bpf" mounted bpf /sys/fs/bpf
check "tracefs mounted at /sys/kernel/tracing" mounted tracefs /sys/kernel/tracing
check "tmpfs at /tmp" mounted tmpfs /tmp
check "tmpfs at /run" mounted tmpfs /run
check "PSI available (/proc/pressure/memory)" test -r /proc/pressure/memory
check "agentcgd on PATH" command -v agentcgd
check "/etc/agentcgd/policies.d exists" test -d /etc/agentcgd/policies.d
check "lo is up" sh -c 'ip link show lo | grep -q UP'

# Paths given with --with are visible at their host paths.
nwith=0
if [ -f /vm/.with ]; then
    while IFS= read -r p; do
        nwith=$((nwith + 1))
        if [ -e "$p" ]; then ok "--with $p visible"; else bad "--with $p not found in the guest"; fi
    done </vm/.with
fi
for p in "$@"; do
    if [ -e "$p" ]; then ok "$p visible"; else bad "$p not found in the guest"; fi
done
[ "$nwith" -gt 0 ] || bad "no --with path given (usage: tests/vm/run --with PATH tests/vm/smoke.sh)"

if [ "$fails" -ne 0 ]; then
    echo "smoke: $fails check(s) failed"
    exit 1
fi
echo "smoke: all checks passed"
