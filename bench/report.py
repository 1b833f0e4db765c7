#!/usr/bin/env python3
"""Turns bench/compare's JSON lines into bench/results.md: one table per case, the median
over repetitions for every figure, and each Halley configuration's value divided by the best
peer's."""
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


if __name__ == "__main__":
    main()
