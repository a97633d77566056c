#!/bin/sh
# 24-daemon-activity: the daemon's activity monitor on the sched_ext kernel,
# agentcgd started as users start it (shipped config: activity on, our
# scheduler): an agent placed by the shipped policies that alternates 1 s of
# CPU work with 4 s of sleep is shown idle in `agentcgd status --json`
# during its sleeps and active again when it works (per agent and for its
# family), a second agent blocked on a pipe is idle, and cpu.idle and
# cpu.weight of every cgroup under ROOT are the same after the cycles as
# before them: the monitor only observes.
R=/sys/fs/cgroup/agentcg
W=/tmp/t24
mkdir -p $W/bin
D=
fail() { echo "FAIL: $*"; echo "--- agentcgd log"; tail -30 $W/log 2>/dev/null; [ -n "$D" ] && kill "$D" 2>/dev/null; exit 1; }
[ -e /sys/kernel/btf/vmlinux ] || { echo "SKIP: kernel BTF (/sys/kernel/btf/vmlinux) missing"; exit 0; }
compact() { tr -d ' \n'; }
agent_field() { # id field
    agentcgd status --json 2>/dev/null | compact |
        sed -n "s/.*\"id\":\"$1\"[^}]*\"$2\":\"\{0,1\}\([^,\"}]*\).*/\1/p" | head -1
}
# Every cgroup under ROOT with its cpu.idle and cpu.weight.
knobs() { find $R -type d | sort | while read -r d; do
    echo "$d idle=$(cat $d/cpu.idle 2>/dev/null) weight=$(cat $d/cpu.weight 2>/dev/null)"; done; }

agentcgd /sys/fs/cgroup/agentcg > $W/log 2>&1 & D=$!
i=0; until [ -s /run/agentcgd/state.json ]; do i=$((i+1)); [ $i -gt 300 ] && fail "no state file"; usleep 100000; done
i=0; until agentcgd status --json 2>/dev/null | compact | grep -q '"activity":"bpf'; do
    i=$((i+1)); [ $i -gt 300 ] && fail "activity monitor not on BPF: $(agentcgd status --json | compact | grep -o '"activity":"[^"]*"')"; usleep 100000; done

# Two agents (comm claude: the shipped claude-code rule).
printf '#!/bin/sh\nfor i in 1 2 3; do timeout 1 sh -c "while :; do :; done"; sleep 4; done\nsleep 60\n' > $W/bin/claude
chmod +x $W/bin/claude
mkfifo $W/pipe
printf '#!/bin/sh\nread x < %s\n' $W/pipe > $W/bin/aider; chmod +x $W/bin/aider
$W/bin/claude & A=$!
$W/bin/aider & B=$!
i=0; until [ -d $R/session_high/claude-code-$A ] && [ -d $R/session_high/aider-$B ]; do
    i=$((i+1)); [ $i -gt 200 ] && fail "agents not in their leaves: $(ls $R/session_high)"; usleep 50000; done
knobs > $W/before
echo "leaves: $(cd $R/session_high && ls -d */ | tr -d / | tr "\n" " ")"

# The cycling agent: idle in a sleep, active again when it works.
seen_idle=0; seen_active_again=0; t=0
while [ $t -lt 180 ]; do
    s=$(agent_field claude-code-$A state)
    if [ "$s" = idle ]; then seen_idle=1; fi
    if [ $seen_idle = 1 ] && [ "$s" = active ]; then seen_active_again=1; break; fi
    usleep 100000; t=$((t+1))
done
[ $seen_idle = 1 ] || fail "claude-code-$A never idle: $(agentcgd status --json | compact | head -c 1500)"
[ $seen_active_again = 1 ] || fail "claude-code-$A never active again after idle"
fam=$(agentcgd status --json | compact | sed -n 's/.*"family_activity":{\(.*\)/\1/p' | head -c 600)
echo "$fam" | grep -q '"claude-code":{"state":"' || fail "no family activity for claude-code: $fam"
tr=$(agent_field claude-code-$A transitions)
[ "${tr:-0}" -ge 2 ] || fail "transitions $tr"
# The blocked agent is idle.
[ "$(agent_field aider-$B state)" = idle ] || fail "aider-$B blocked on a pipe is $(agent_field aider-$B state)"
# One more cycle, then the knobs.
sleep 6
knobs > $W/after
diff $W/before $W/after > $W/diff || fail "cpu.idle/cpu.weight changed under the monitor: $(cat $W/diff)"
echo "activity through agentcgd: claude-code-$A idle and active again ($tr transitions), aider-$B idle; cpu.idle/cpu.weight of $(wc -l < $W/before) cgroups unchanged"
echo x > $W/pipe
kill $A $B 2>/dev/null
kill $D; wait $D 2>/dev/null
exit 0
