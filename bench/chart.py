#!/usr/bin/env python3
"""Draws bench/compare's raw JSON lines as one SVG (plain Python, no plotting library):
deliveries per second per server for each delivering case, and latency p50 / p99 on a log
scale. Figures are the same medians report.py tabulates.

    bench/chart.py [RAW.jsonl [OUT.svg]]   default: the newest bench/results/raw-*.jsonl,
                                           written to bench/results/chart.svg
"""
import glob
import math
import os
import sys
from collections import OrderedDict
from html import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import HALLEYS, NAMES, PEERS, get, median  # noqa: E402

COLORS = {"halley": "#3559e0", "halley-off": "#5b7cf0", "halley-di50": "#7a9bff",
          "halley-ws": "#1b2f8a", "faye": "#f79009", "faye-ws": "#b54708", "cometd": "#12b76a",
          "halley-base": "#98a2b3"}
# Servers added later than this table get a grey rather than a crash.
DEFAULT_COLOR = "#667085"
WIDTH = 960
LEFT = 230  # room for the case and server names
RIGHT = 110  # room for the value labels
BAR = 14
GAP = 6


def load(raw):
    import json

    cases = OrderedDict()
    for line in open(raw):
        line = line.strip()
        if line:
            d = json.loads(line)
            cases.setdefault(d["case"], {}).setdefault(d["server"], []).append(d)
    return cases


def fmt(x):
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def text(x, y, s, size=12, anchor="start", weight="normal", fill="#1d2433"):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{fill}">{escape(s)}</text>')


def throughput(cases, y):
    """Deliveries/s bars, each case scaled to its own best (the numbers are printed)."""
    out = [text(20, y, "Deliveries per second (median; bars scaled per case, longer is better)", 15, weight="bold")]
    y += 14
    span = WIDTH - LEFT - RIGHT
    for case, by_server in cases.items():
        servers = [s for s in HALLEYS + PEERS if s in by_server]
        vals = {s: median([get(r, "deliveries_per_s") for r in by_server[s]]) for s in servers}
        vals = {s: v for s, v in vals.items() if v}
        if not vals:
            continue
        y += 18
        out.append(text(20, y, case, 13, weight="bold"))
        top = max(vals.values())
        for s in servers:
            if s not in vals:
                continue
            y += GAP
            w = span * vals[s] / top
            out.append(text(LEFT - 8, y + BAR - 3, NAMES[s].replace("`", ""), 11, "end"))
            out.append(f'<rect x="{LEFT}" y="{y}" width="{w:.1f}" height="{BAR}" fill="{COLORS.get(s, DEFAULT_COLOR)}"/>')
            out.append(text(LEFT + w + 6, y + BAR - 3, fmt(vals[s]), 11))
            y += BAR
    return out, y + 10


def latency(cases, y):
    """p99 (light bar) and p50 (dark bar) on a log axis from 10 ms to 30 s."""
    lo, hi = 10.0, 30000.0
    span = WIDTH - LEFT - RIGHT

    def pos(ms):
        ms = min(max(ms, lo), hi)
        return LEFT + span * (math.log10(ms) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    out = [text(20, y, "Latency, publish to delivery: p50 (dark) and p99 (light), ms, log scale (shorter is better)",
                15, weight="bold")]
    y += 10
    top = y
    rows = []
    for case, by_server in cases.items():
        servers = [s for s in HALLEYS + PEERS if s in by_server]
        vals = {s: (median([get(r, "latency.p50_ms") for r in by_server[s]]),
                    median([get(r, "latency.p99_ms") for r in by_server[s]])) for s in servers}
        vals = {s: v for s, v in vals.items() if v[0] is not None and v[1] is not None}
        if not vals:
            continue
        y += 18
        rows.append(text(20, y, case, 13, weight="bold"))
        for s in servers:
            if s not in vals:
                continue
            y += GAP
            p50, p99 = vals[s]
            rows.append(text(LEFT - 8, y + BAR - 3, NAMES[s].replace("`", ""), 11, "end"))
            rows.append(f'<rect x="{LEFT}" y="{y}" width="{pos(p99) - LEFT:.1f}" height="{BAR}" '
                        f'fill="{COLORS.get(s, DEFAULT_COLOR)}" fill-opacity="0.35"/>')
            rows.append(f'<rect x="{LEFT}" y="{y}" width="{pos(p50) - LEFT:.1f}" height="{BAR}" fill="{COLORS.get(s, DEFAULT_COLOR)}"/>')
            rows.append(text(pos(p99) + 6, y + BAR - 3, f"{fmt(p50)} / {fmt(p99)}", 11))
            y += BAR
    y += 8
    grid = []
    tick = lo
    while tick <= hi:
        x = pos(tick)
        grid.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y}" stroke="#e4e7ec"/>')
        grid.append(text(x, y + 14, f"{tick:g}", 10, "middle", fill="#667085"))
        tick *= 10
    return grid + rows + out, y + 30


def main():
    args = sys.argv[1:]
    here = os.path.dirname(os.path.abspath(__file__))
    raw = args[0] if args else max(glob.glob(os.path.join(here, "results", "raw-*.jsonl")))
    target = args[1] if len(args) > 1 else os.path.join(here, "results", "chart.svg")
    cases = load(raw)
    delivering = OrderedDict((c, s) for c, s in cases.items() if c.split()[0] in ("fanout", "rooms"))
    body, y = throughput(delivering, 30)
    lat, y = latency(delivering, y + 20)
    body += lat
    y += 10
    body.append(text(20, y, f"bench/compare, raw results {os.path.basename(raw)}; each server on CPU 0, "
                     "load generator on CPU 1, loopback.", 11, fill="#667085"))
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{y + 16}" '
           f'viewBox="0 0 {WIDTH} {y + 16}" font-family="system-ui, -apple-system, Segoe UI, sans-serif">',
           f'<rect width="{WIDTH}" height="{y + 16}" fill="#ffffff"/>'] + body + ["</svg>"]
    with open(target, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"wrote {os.path.relpath(target)} from {os.path.relpath(raw)}", file=sys.stderr)


if __name__ == "__main__":
    main()
