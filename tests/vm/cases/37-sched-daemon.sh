#!/bin/sh
# 37-sched-daemon: agentcgd loads the scheduler (state enabled, ops agentcg,
# `agentcgd status` says so), CPU hogs written into a leaf of session_high
# and one of session_low (made as the daemon makes an agent's leaf: the
# sessions hold only leaves) split 3:1 (cpu.weight 150:50) within 5% and
# status shows their hweights 3:1, sysrq-S is reported and recovered from
# (restart, last exit sysrq), and SIGTERM leaves the kernel on its own
# scheduler (state disabled).
. /vm/lib/sched.sh

ROOT=$CG/agentcg
DAEMON=
stop_daemon() { [ -n "$DAEMON" ] && kill -TERM $DAEMON 2>/dev/null && wait $DAEMON 2>/dev/null; DAEMON=; }
fail() { echo "FAIL: $*"; [ -f /tmp/agentcgd37.log ] && daemon_log /tmp/agentcgd37.log 30; cleanup; stop_daemon; exit 1; }
status_json() { agentcgd status --json 2>/dev/null | tr -d '\n '; }

[ "$(cat $SX/state 2>/dev/null)" = disabled ] || fail "sched_ext not available/disabled: $(cat $SX/state 2>&1)"
NCPU=$(nproc)
agentcgd $ROOT >/tmp/agentcgd37.log 2>&1 &
DAEMON=$!
wait_state enabled 30 || fail "agentcgd did not load the scheduler (state $(cat $SX/state))"
[ "$(cat $SX/root/ops)" = agentcg ] || fail "ops name $(cat $SX/root/ops)"
# the daemon writes its first state file after its start-up scan (35 s under
# TCG while procmon's BPF load fails with E2BIG and it falls back): wait 90 s
i=0; while ! status_json | grep -q '"backend":"sched_ext:agentcg"'; do
    i=$((i + 1)); [ $i -gt 900 ] && { agentcgd status; fail "status does not show sched_ext: agentcg"; }
    usleep 100000
done
agentcgd status | grep -i sched
for s in session_high session_low; do [ -d $ROOT/$s ] || fail "$ROOT/$s missing"; done
echo "weights: high $(cat $ROOT/session_high/cpu.weight) low $(cat $ROOT/session_low/cpu.weight)"

leaf agentcg/session_high/t37
leaf agentcg/session_low/t37
hogs agentcg/session_high/t37 $NCPU
hogs agentcg/session_low/t37 $NCPU
sleep $WARM
ratio agentcg/session_high agentcg/session_low 3 || fail "session_high:session_low is not 3:1 within 5%"
# status shows each session's share now, from the scheduler's tree: 3:1 of agentcg's
shares=$(agentcgd status | awk '$1 ~ /^\/agentcg(\/session_(high|low))?$/ { sub("hweight=", "", $3); h[$1] = $3 }
    END { a = h["/agentcg"]; hi = h["/agentcg/session_high"]; lo = h["/agentcg/session_low"]
        printf "agentcg %s high %s low %s", a, hi, lo
        dh = hi - 0.75 * a; dl = lo - 0.25 * a
        exit (lo > 0 && dh < 0.001 && -dh < 0.001 && dl < 0.001 && -dl < 0.001) ? 0 : 1 }') ||
    fail "status hweights not 3:1 of agentcg's: $shares"
echo "status hweights: $shares"

echo S > /proc/sysrq-trigger
wait_state disabled 10 || fail "state $(cat $SX/state) after sysrq-S"
echo "after sysrq-S: state $(cat $SX/state)"
wait_state enabled 30 || fail "agentcgd did not restart the scheduler after sysrq-S"
i=0; while ! status_json | grep -q '"kind":"sysrq"'; do
    i=$((i + 1)); [ $i -gt 50 ] && { agentcgd status --json; fail "status does not report the sysrq exit"; }
    usleep 100000
done
# The kernel says "enabled" as soon as the supervisor re-attaches, but the
# daemon's state file is a snapshot rewritten every second: the one written
# while the supervisor waited out its backoff already has the sysrq exit and
# still restarts 0. Poll until a snapshot taken after the re-attach shows up.
i=0; while ! status_json | grep -q '"restarts":[1-9]'; do
    i=$((i + 1)); [ $i -gt 100 ] && { agentcgd status --json; fail "status does not count the restart"; }
    usleep 100000
done
echo "recovered: state $(cat $SX/state), $(status_json | grep -o '"restarts":[0-9]*')"

stop_daemon
wait_state disabled 5 || fail "state $(cat $SX/state) after SIGTERM of agentcgd"
echo "after SIGTERM: state $(cat $SX/state)"
cleanup
rmdir $ROOT/session_high/t37 $ROOT/session_low/t37 2>/dev/null
echo "PASS 37-sched-daemon"
