#!/usr/bin/env python3
"""Turns bench/compare's JSON lines into bench/results.md: one table per case, the median
over repetitions for every figure, and each Halley configuration's value divided by the best
peer's. `--cluster` writes bench/results-cluster.md instead (one node on memory, one on Redis,
three behind HAProxy; Redis commands per publish); `--merge` is how bench/compare turns one
loadgen line and the Redis counters around it into a raw line."""
import json
import statistics
import sys
from collections import OrderedDict

HALLEYS = ["halley", "halley-off", "halley-di50", "halley-ws"]
# halley-base (another Halley build, only when asked for) counts as a peer: the ratio is
# then what this build costs or gains against it.
PEERS = ["faye", "cometd", "faye-ws", "halley-base"]
NAMES = {
    "halley": "Halley",
    "halley-off": "Halley `--coalescing off`",
    "halley-di50": "Halley `--delivery-interval 50`",
    "halley-ws": "Halley over WebSocket",
    "faye": "Faye 1.4.3",
    "faye-ws": "Faye 1.4.3 over WebSocket",
    "halley-base": "Halley, base build",
    "cometd": "cometd-nodejs-server 1.2.1",
}
RATIO_NAMES = {"halley": "Halley ÷ best peer", "halley-off": "Halley off ÷ best peer",
               "halley-di50": "Halley di50 ÷ best peer", "halley-ws": "Halley WS ÷ Faye WS"}

# (label, path, better): better is "hi", "lo" or None (no ratio)
METRICS = {
    "fanout": [
        ("subscribers connected", "subscribed", None),
        ("deliveries/s", "deliveries_per_s", "hi"),
        ("publishes/s (acked)", "publishes_per_s", "hi"),
        ("latency p50 ms", "latency.p50_ms", "lo"),
        ("latency p99 ms", "latency.p99_ms", "lo"),
        ("latency max ms", "latency.max_ms", "lo"),
        ("lost", "lost", None),
        ("duplicated", "duplicated", None),
        ("out of order", "out_of_order", None),
        ("client errors (HTTP+Bayeux+402+I/O)", "error_total", None),
    ],
    "rooms": [
        ("clients joined", "joined", None),
        ("publishes/s offered", "offered_per_s", None),
        ("publishes/s acked", "acked_per_s", "hi"),
        ("deliveries/s", "deliveries_per_s", "hi"),
        ("expected deliveries", "expected_deliveries", None),
        ("latency p50 ms", "latency.p50_ms", "lo"),
        ("latency p99 ms", "latency.p99_ms", "lo"),
        ("latency max ms", "latency.max_ms", "lo"),
        ("lost", "lost", None),
        ("duplicated", "duplicated", None),
        ("client errors", "error_total", None),
    ],
    "idle": [
        ("clients parked", "parked", None),
        ("time to establish s", "establish_s", "lo"),
        ("server RSS before KiB", "rss_before_kib", "lo"),
        ("server RSS parked KiB", "rss_parked_kib", "lo"),
        ("server RSS per parked client KiB", "rss_per_client_kib", "lo"),
        ("server sessions", "sessions_parked", None),
        ("client errors", "error_total", None),
    ],
    "churn": [
        ("clients churned", "clients", None),
        ("left / vanished", None, None),
        ("sessions baseline", "sessions_baseline", None),
        ("sessions peak", "sessions_peak", None),
        ("sessions after expiry window", "sessions_after", None),
        ("RSS baseline KiB", "rss_baseline_kib", "lo"),
        ("RSS peak KiB", "rss_peak_kib", "lo"),
        ("RSS after expiry window KiB", "rss_after_kib", "lo"),
        ("RSS after / baseline", "rss_after_over_baseline", "lo"),
        ("client errors", "error_total", None),
    ],
}


METRICS["chat"] = METRICS["rooms"]


def get(d, path):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def median(values):
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(values) if values else None


def fmt(x):
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return f"{x:,}"


def main():
    raw, command = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "bench/compare"
    cases = OrderedDict()
    for line in open(raw):
        line = line.strip()
        if not line:
            continue
        d = json.loads(line)
        cases.setdefault(d["case"], {}).setdefault(d["server"], []).append(d)
    out = ["# Halley vs Faye vs cometd-nodejs-server", ""]
    out.append(f"Produced by `{command}` (raw results: `bench/results/{raw.rsplit('/', 1)[-1]}`). "
               "Each server on CPU 0, the load generator on CPU 1, loopback. Figures are medians "
               "over the repetitions shown; the last columns are each Halley configuration's figure "
               "divided by the best peer's (best = highest for rates, lowest for latency and memory). "
               "`--delivery-interval 50` (off by default) spaces a session's delivery-carrying "
               "connect replies at least 50 ms apart; it runs fanout and rooms only.")
    out.append("")
    for case, by_server in cases.items():
        workload = case.split()[0]
        # A server without the transport (e.g. WebSocket refused) gets a note, not a column.
        unavailable = {s: rs[0]["unavailable"] for s, rs in by_server.items()
                       if rs and all("unavailable" in r for r in rs)}
        by_server = {s: rs for s, rs in by_server.items() if s not in unavailable}
        servers = [s for s in HALLEYS + PEERS if s in by_server]
        halleys = [s for s in HALLEYS if s in by_server]
        reps = max((len(v) for v in by_server.values()), default=0)
        out.append(f"## {case}  ({reps} run{'s' if reps != 1 else ''})")
        out.append("")
        for s, reason in unavailable.items():
            out.append(f"{NAMES.get(s, s)}: **unavailable** ({reason}).")
            out.append("")
        if not servers:
            continue
        # Adaptive coalescing against the same build with it off, when both ran.
        vs_off = "halley" in by_server and "halley-off" in by_server
        out.append("| figure | " + " | ".join(NAMES[s] for s in servers) + " | "
                   + " | ".join(RATIO_NAMES[h] for h in halleys)
                   + (" | Halley ÷ Halley off" if vs_off else "") + " |")
        out.append("|---|" + "---:|" * (len(servers) + len(halleys) + vs_off))
        for label, path, better in METRICS.get(workload, []):
            if path is None:
                vals = {s: f"{median([r.get('left') for r in by_server[s]])} / "
                           f"{median([r.get('vanished') for r in by_server[s]])}" for s in servers}
                out.append(f"| {label} | " + " | ".join(vals[s] for s in servers)
                           + " |" * (len(halleys) + vs_off + 1))
                continue
            if path == "error_total" or path in ("lost", "duplicated", "out_of_order"):
                vals = {s: max((get(r, path) or 0) for r in by_server[s]) for s in servers}
            else:
                vals = {s: median([get(r, path) for r in by_server[s]]) for s in servers}
            peer_vals = [vals[p] for p in PEERS if p in vals and vals[p] is not None]
            best = None
            if better and peer_vals:
                best = max(peer_vals) if better == "hi" else min(peer_vals)
            ratios = [f"{vals[h] / best:.2f}×" if best and vals[h] is not None else ""
                      for h in halleys]
            if vs_off:
                off = vals["halley-off"]
                ratios.append(f"{vals['halley'] / off:.2f}×"
                              if better and vals["halley"] is not None and off else "")
            out.append(f"| {label} | " + " | ".join(fmt(vals[s]) for s in servers) + " | "
                       + " | ".join(ratios) + " |")
        out.append("")
    out.append("Counts of lost, duplicated, out-of-order and errors are the worst run, not the median.")
    out.append("")
    out.append("Rows marked *(websocket)* run the same workload with the load generator's clients on "
               "WebSocket (one socket per client, deliveries pushed as frames); only Faye of the peers "
               "has WebSocket.")
    out.append("")
    print("\n".join(out))


# Commands bench/compare itself sends to Redis (to read the counters), left out of the counts.
OWN_COMMANDS = {"info"}


def commandstats(text):
    """`INFO commandstats` as {command: (calls, usec)}."""
    stats = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_"):].partition(":")
        kv = dict(f.split("=", 1) for f in fields.split(",") if "=" in f)
        stats[name] = (int(kv.get("calls", 0)), int(kv.get("usec", 0)))
    return stats


def merge(line, server, case, before, after, extra):
    """One raw line: loadgen's JSON, which server and case, and the Redis counters' delta."""
    d = json.loads(line)
    d["server"], d["case"] = server, case
    d.update(json.loads(extra) if extra.strip() else {})
    if after.strip():
        b, a = commandstats(before), commandstats(after)
        delta = {c: (calls - b.get(c, (0, 0))[0], usec - b.get(c, (0, 0))[1])
                 for c, (calls, usec) in a.items() if c not in OWN_COMMANDS}
        delta = {c: v for c, v in delta.items() if v[0] > 0}
        d["redis_calls_by_command"] = {c: v[0] for c, v in sorted(delta.items())}
        d["redis_calls"] = sum(v[0] for v in delta.values())
        d["redis_usec"] = sum(v[1] for v in delta.values())
        acked = d.get("acked") or 0
        if acked:
            d["redis_calls_per_publish"] = round(d["redis_calls"] / acked, 2)
            d["redis_usec_per_publish"] = round(d["redis_usec"] / acked, 1)
    return d


CLUSTER_SERVERS = ["halley", "halley-redis", "halley-cluster"]
CLUSTER_NAMES = {"halley": "1 node, memory", "halley-redis": "1 node, Redis",
                 "halley-cluster": "3 nodes, Redis, HAProxy"}
CLUSTER_EXTRA = [
    ("Redis commands per publish (whole run)", "redis_calls_per_publish", None),
    ("Redis CPU µs per publish (whole run)", "redis_usec_per_publish", None),
]


def cluster_report(raw, command, engine, lb):
    cases = OrderedDict()
    for line in open(raw):
        if line.strip():
            d = json.loads(line)
            cases.setdefault(d["case"], {}).setdefault(d["server"], []).append(d)
    out = ["# Halley on one node, on Redis, and on three nodes behind HAProxy", ""]
    out.append(f"Produced by `{command}` (raw results: `bench/results/{raw.rsplit('/', 1)[-1]}`). "
               "The server side (the nodes, Redis, HAProxy) on CPU 0, the load generator on CPU 1, "
               "loopback: three nodes share one core here, so the cluster column shows the cost of "
               "the engine and the balancer, not scaling. Medians over the runs shown; the ratio "
               "columns divide by the memory engine's figure. Redis commands are `INFO "
               "commandstats` deltas over each run (a fresh Redis per run) divided by the "
               "acknowledged publishes.")
    if engine == "memory":
        out.append("")
        out.append("**Dry run (`CLUSTER_ENGINE=memory`)**: the nodes ran on the memory engine and "
                   "HAProxy sent every request to the first node; these figures test the tooling, "
                   "not the Redis engine.")
    if lb == "sticky":
        out.append("")
        out.append("**Sticky balancer (`CLUSTER_LB=sticky`)**: HAProxy kept each client on one node (a "
                   "cookie), because the engine did not share sessions yet; publishes still crossed "
                   "nodes through Redis.")
    out.append("")
    cost = OrderedDict()
    for case, by_server in cases.items():
        workload = case.split()[0]
        if workload == "cost":
            cost[case] = by_server
            continue
        servers = [s for s in CLUSTER_SERVERS if s in by_server]
        others = [s for s in servers if s != "halley"]
        reps = max((len(v) for v in by_server.values()), default=0)
        out.append(f"## {case}  ({reps} run{'s' if reps != 1 else ''})")
        out.append("")
        out.append("| figure | " + " | ".join(CLUSTER_NAMES[s] for s in servers) + " | "
                   + " | ".join(f"{CLUSTER_NAMES[s]} ÷ memory" for s in others) + " |")
        out.append("|---|" + "---:|" * (len(servers) + len(others)))
        for label, path, better in METRICS.get(workload, []) + CLUSTER_EXTRA:
            if path is None:
                continue
            if path == "error_total" or path in ("lost", "duplicated", "out_of_order"):
                vals = {s: max((get(r, path) or 0) for r in by_server[s]) for s in servers}
            else:
                vals = {s: median([get(r, path) for r in by_server[s]]) for s in servers}
            base = vals.get("halley")
            ratios = [f"{vals[s] / base:.2f}×" if better and base and vals[s] is not None else ""
                      for s in others]
            out.append(f"| {label} | " + " | ".join(fmt(vals[s]) for s in servers) + " | "
                       + " | ".join(ratios) + " |")
        out.append("")
    if cost:
        out.append("## Redis commands per publish, by subscriber count")
        out.append("")
        out.append("Fanout at 20 publishes/s for 2 s and for 8 s (one run each, a fresh Redis each); "
                   "per publish = (commands of the long run − of the short run) ÷ (publishes of the "
                   "long run − of the short run), so the joins cancel out and the connects that "
                   "carry the deliveries stay in.")
        out.append("")
        out.append("| server | subscribers | publishes (short / long) | commands (short / long) "
                   "| commands per publish | by command, per publish |")
        out.append("|---|---:|---:|---:|---:|---|")
        for case, by_server in cost.items():
            subs = case.split("S=")[-1]
            for s in CLUSTER_SERVERS:
                runs = sorted(by_server.get(s, []), key=lambda r: r.get("cost_duration_s", 0))
                if len(runs) < 2:
                    continue
                short, long_ = runs[0], runs[-1]
                dp = (long_.get("acked") or 0) - (short.get("acked") or 0)
                dc = (long_.get("redis_calls") or 0) - (short.get("redis_calls") or 0)
                per = f"{dc / dp:.2f}" if dp > 0 else "—"
                bc_s = short.get("redis_calls_by_command", {})
                bc_l = long_.get("redis_calls_by_command", {})
                by = {c: (bc_l.get(c, 0) - bc_s.get(c, 0)) / dp for c in bc_l} if dp > 0 else {}
                top = ", ".join(f"{c} {v:.2f}" for c, v in sorted(by.items(), key=lambda kv: -kv[1])
                                if abs(v) >= 0.005)
                out.append(f"| {CLUSTER_NAMES[s]} | {subs} | {short.get('acked')} / {long_.get('acked')} "
                           f"| {short.get('redis_calls')} / {long_.get('redis_calls')} | {per} | {top or '—'} |")
        out.append("")
    out.append("Counts of lost, duplicated, out-of-order and errors are the worst run, not the median.")
    out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--merge":
        print(json.dumps(merge(*sys.argv[2:8])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--cluster":
        cluster_report(sys.argv[2], sys.argv[3], *(sys.argv[4:6] + ["redis", "roundrobin"][len(sys.argv[4:6]):]))
    else:
        main()
