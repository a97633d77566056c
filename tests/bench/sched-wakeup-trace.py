"""Analysis for tests/bench/sched-wakeup-trace: decode the guest's traces
of `agentcg-schedbench wakeup` and say, per scheduler and round, how the
message thread's bursts of four wake-ups went (stdin: the VM's console;
argument: the JSON file to write)."""
import base64
import collections
import gzip
import json
import re
import statistics
import sys

EVENT = re.compile(r"^\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+): (\w+): (.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


def traces(console):
    for m in re.finditer(r"=== TRACE (\S+)\n(.*?)=== END \1", console, re.S):
        b64 = "".join(l.strip() for l in m.group(2).split("\n")
                      if re.fullmatch(r"[A-Za-z0-9+/=]+", l.strip()))
        yield m.group(1), gzip.decompress(base64.b64decode(b64)).decode()


def analyze(text):
    ev = []
    for line in text.splitlines():
        m = EVENT.match(line)
        if m:
            comm, pid, cpu, ts, name, rest = m.groups()
            ev.append((float(ts) * 1e6, int(cpu), int(pid), comm, name, dict(FIELD.findall(rest))))
    # the workload's threads keep the name of agentcg-schedbench (15 chars)
    bench = sorted({p for _, _, p, comm, _, _ in ev if comm.startswith("agentcg-schedbe")})
    if len(bench) < 5:
        return None
    msg, workers = bench[0], set(bench[1:])
    name = {msg: "M", 0: "idle", **{w: "W%d" % i for i, w in enumerate(bench[1:])}}
    switches = [(t, cpu, int(f["next_pid"])) for t, cpu, _, _, n, f in ev if n == "sched_switch"]
    wakings = [i for i, e in enumerate(ev)
               if e[4] == "sched_waking" and e[2] == msg and int(e[5]["pid"]) in workers]
    cycles, cur = [], []
    for i in wakings:
        if cur and ev[i][0] - ev[cur[-1]][0] > 500:
            cycles.append(cur)
            cur = []
        cur.append(i)
    cycles = [c for c in cycles if len(c) == 4][3:-3]  # whole bursts, not the edges
    writes, sleeps, by_waker, total, lat, ranks = [], [], 0, 0, [], collections.defaultdict(list)
    before = collections.Counter()
    for c in cycles:
        t0, mcpu = ev[c[0]][0], ev[c[0]][1]
        writes.append(ev[c[-1]][0] - t0)
        slept = next((e[0] for e in ev[c[0]:] if e[4] == "sched_switch" and int(e[5]["prev_pid"]) == msg), None)
        if slept is not None:
            sleeps.append(slept - t0)
        runs = []
        for i in c:
            pid, tw = int(ev[i][5]["pid"]), ev[i][0]
            woke = next((e for e in ev[i:] if e[4] == "sched_wakeup" and int(e[5]["pid"]) == pid), None)
            ran = next((s for s in switches if s[0] >= tw and s[2] == pid), None)
            if woke is None or ran is None:
                continue
            total += 1
            by_waker += woke[1] == mcpu  # finished on the waker's CPU, not from a wake list
            runs.append((ran[0], ran[1], pid, tw))
        runs.sort()
        for rank, (tr, cpu, pid, tw) in enumerate(runs):
            lat.append(tr - tw)
            ranks[rank].append(tr - tw)
            if rank >= 2:
                seq = [name.get(p, "other") for t, sc, p in switches if sc == cpu and tw <= t < tr]
                before[" ".join(seq) or "-"] += 1
    med = lambda v: round(statistics.median(v)) if v else None
    return {
        "cycles": len(cycles),
        "writes_us": med(writes),
        "sleeps_at_us": med(sleeps),
        "waker_finished": round(by_waker / total, 3) if total else None,
        "p50_us": med(lat),
        "rank_p50_us": [med(ranks[r]) for r in range(4)],
        "before_waiting": before.most_common(3),
    }


def main():
    console = sys.stdin.read().replace("\r", "")
    rows = []
    for label, text in traces(console):
        sched, _, rnd = label.rpartition("-")
        r = analyze(text)
        if r:
            rows.append({"scheduler": sched, "round": int(rnd), **r})
    if not rows:
        sys.exit("sched-wakeup-trace: no traces decoded from the VM's output")
    print("\nWake-up bursts, traced (a message thread wakes 4 workers through pipes every 2 ms; p50 over cycles, us)")
    print("%-9s %5s %6s %7s %9s %8s %7s %s" % ("scheduler", "round", "cycles", "writes", "sleeps_at",
                                            "by_waker", "p50", "p50 by rank (1st..4th to run)"))
    for r in rows:
        print("%-9s %5d %6d %7s %9s %7.0f%% %7s %s" % (
            r["scheduler"], r["round"], r["cycles"], r["writes_us"], r["sleeps_at_us"],
            100 * (r["waker_finished"] or 0), r["p50_us"], " ".join(str(x) for x in r["rank_p50_us"])))
    print("\nWhat ran on a waiting worker's CPU between its wake-up and its run (3rd and 4th to run; M: the waker)")
    for r in rows:
        print("%-9s %5d  %s" % (r["scheduler"], r["round"],
                                "; ".join("%s (%d)" % (k, v) for k, v in r["before_waiting"])))
    with open(sys.argv[1], "w") as f:
        json.dump(rows, f, indent=1)


main()
