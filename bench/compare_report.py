"""compare.py's tables: one per scenario while it runs, and at the end the multi-key headline, the
latency that each cache adds at concurrency 1, and the summary of the one-URL rows.

Pure functions over the results compare.py collects (and writes as JSON): a result is a dict with
``name``, ``title``, ``servers`` (server -> Cell as a dict, its ``rounds`` included), ``ratios`` and,
for some rows, ``group`` (``multi-key`` or ``one-url``), ``concurrency``, ``adds``, ``target``,
``against`` and ``fill``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

SERVERS = ("proxy", "nginx", "varnish")
BASELINE = "proxy-before"  # the proxy from --baseline-root, measured in the same rounds
ORIGIN = "origin"  # the origin asked directly (the latency rows): what the others add to


@dataclass
class Cell:
    rounds: list[dict[str, float]] = field(default_factory=list)
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_mib: float = 0.0
    errors: int = 0
    origin_per_request: float = 0.0
    other_cpu_pct: float = 0.0  # median share of the CPUs used by processes this run did not start


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b and a > 0 and b > 0 else "-"


def peers(cells: dict[str, Any]) -> list[str]:
    """The servers the proxy is compared with, in a fixed order."""
    return [p for p in ("nginx", "varnish", BASELINE) if p in cells]


def ratios(cells: dict[str, Cell]) -> dict[str, str]:
    out: dict[str, str] = {}
    p = cells.get("proxy")
    if p is None:
        return out
    for peer in peers(cells):
        out[f"proxy/{peer} rps"] = fmt_ratio(p.rps, cells[peer].rps)
        out[f"proxy/{peer} p99"] = fmt_ratio(p.p99_ms, cells[peer].p99_ms)
    return out


def scenario_table(name: str, title: str, cells: dict[str, Cell], notes: dict[str, str]) -> str:
    head = (
        f"{'server':<13}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}{'origin/req':>11}{'errors':>8}"
        f"{'other %':>9}"
    )
    lines = [f"{name}: {title}", head, "-" * len(head)]
    for server, c in cells.items():
        lines.append(
            f"{server:<13}{c.rps:>10.0f}{c.p50_ms:>9.3f}{c.p99_ms:>9.3f}{c.rss_mib:>9.1f}"
            f"{c.origin_per_request:>11.2f}{c.errors:>8}{c.other_cpu_pct:>9.0f}"
            f"  {notes.get(server, '')}".rstrip()
        )
    p = cells.get("proxy")
    if p is not None:
        for peer in peers(cells):
            q = cells[peer]
            lines.append(
                f"proxy/{peer}: rps x{fmt_ratio(p.rps, q.rps)}, p99 x{fmt_ratio(p.p99_ms, q.p99_ms)}"
            )
    return "\n".join(lines)


def _columns(results: list[dict[str, Any]]) -> list[str]:
    """proxy / nginx / varnish always (a missing one shows as -), then proxy-before if measured."""
    cols = list(SERVERS)
    if any(BASELINE in r["servers"] for r in results):
        cols.append(BASELINE)
    return cols


def _each(s: dict[str, Any], cols: list[str], key: str, fmt: str) -> str:
    return " / ".join(format(s[n][key], fmt) if n in s else "-" for n in cols)


def summary_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per scenario; medians per server (proxy / nginx / varnish) and ratios."""
    cols = _columns(results)
    who = " / ".join(cols)
    extra = BASELINE in cols
    head = (
        f"| scenario | rps {who} | proxy/nginx rps | proxy/varnish rps "
        + ("| proxy/proxy-before rps " if extra else "")
        + "| p50 ms | p99 ms | proxy/nginx p99 | proxy/varnish p99 | RSS MiB | origin/req | other load % |"
    )
    lines = [head, "|" + "---|" * (12 if extra else 11)]
    for r in results:
        s = r["servers"]
        rat = r["ratios"]
        other = max((v.get("other_cpu_pct", 0.0) for v in s.values()), default=0.0)
        lines.append(
            f"| {r['name']} | {_each(s, cols, 'rps', '.0f')} | {rat.get('proxy/nginx rps', '-')} "
            f"| {rat.get('proxy/varnish rps', '-')} "
            + (f"| {rat.get('proxy/proxy-before rps', '-')} " if extra else "")
            + f"| {_each(s, cols, 'p50_ms', '.2f')} | {_each(s, cols, 'p99_ms', '.1f')} "
            f"| {rat.get('proxy/nginx p99', '-')} | {rat.get('proxy/varnish p99', '-')} "
            f"| {_each(s, cols, 'rss_mib', '.0f')} | {_each(s, cols, 'origin_per_request', '.2f')} "
            f"| {other:.0f} |"
        )
    return "\n".join(lines)


def headline_table(results: list[dict[str, Any]]) -> str:
    """The multi-key rows at full concurrency: proxy/peer ratios first, then the medians behind them."""
    cols = _columns(results)
    ratio_cols = [p for p in ("nginx", "varnish", BASELINE) if p in cols]
    head = (
        "| scenario | "
        + " | ".join(f"proxy/{p} rps" for p in ratio_cols)
        + " | "
        + " | ".join(f"proxy/{p} p99" for p in ratio_cols)
        + f" | rps {' / '.join(cols)} | p99 ms | origin/req | other load % |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(ratio_cols) + 4)]
    for r in results:
        s = r["servers"]
        rat = r["ratios"]
        other = max((v.get("other_cpu_pct", 0.0) for v in s.values()), default=0.0)
        lines.append(
            f"| {r['name']} | "
            + " | ".join(rat.get(f"proxy/{p} rps", "-") for p in ratio_cols)
            + " | "
            + " | ".join(rat.get(f"proxy/{p} p99", "-") for p in ratio_cols)
            + f" | {_each(s, cols, 'rps', '.0f')} | {_each(s, cols, 'p99_ms', '.1f')} "
            f"| {_each(s, cols, 'origin_per_request', '.2f')} | {other:.0f} |"
        )
    return "\n".join(lines)


def fill_ratio(result: dict[str, Any], results: list[dict[str, Any]], server: str = "proxy") -> float | None:
    """A cold-fill row's rps over the same server's rps in the row it is judged against (its own
    pass-through miss path); None when either was not measured."""
    against = next((r for r in results if r["name"] == result.get("against")), None)
    if against is None:
        return None
    a = result["servers"].get(server, {}).get("rps", 0.0)
    b = against["servers"].get(server, {}).get("rps", 0.0)
    return a / b if a > 0 and b > 0 else None


def fill_notes(results: list[dict[str, Any]]) -> list[str]:
    """One line per cold-fill row and proxy: its rate against its own miss path, and what L2 kept."""
    lines: list[str] = []
    for r in results:
        if r.get("kind") != "fill":
            continue
        for server in ("proxy", BASELINE):
            if server not in r["servers"]:
                continue
            ratio = fill_ratio(r, results, server)
            target = r.get("target", 0.0)
            if ratio is None:
                judged = f"cold fill / own miss rate: - (run {r.get('against')} in the same run for it)"
            else:
                verdict = "met" if ratio >= target else "NOT met"
                judged = (
                    f"cold fill / own miss rate ({r.get('against')}) {ratio:.2f} "
                    f"(target >= {target:g}: {verdict})"
                )
            lines.append(f"{r['name']}, {server}: {judged}; {stored_note(r.get('fill', {}).get(server))}")
    return lines


def stored_note(fill: dict[str, Any] | None) -> str:
    """ "stored in L2: X of Y" from the proxy's /stats before and after the cold-fill rounds."""
    if not fill:
        return "stored in L2: unknown (no admin /stats)"
    stored, fetched = fill.get("l2_stored"), fill.get("origin_fetches")
    dropped = fill.get("write_dropped")
    text = f"stored in L2: {'?' if stored is None else stored} of {fetched}"
    if stored is not None and fetched and stored >= fetched:
        text += " (all)"
    if dropped is not None:
        text += f", write_dropped {dropped}"
    return text


def latency_adds(cells: dict[str, Any]) -> dict[str, dict[str, float]]:
    """What each server adds to the origin's own latency: per round, its p50 (p99) minus the p50
    (p99) of the origin asked directly in the same round; the median over the rounds, in ms."""
    direct = cells.get(ORIGIN)
    if direct is None:
        return {}
    d_rounds = _rounds(direct)
    out: dict[str, dict[str, float]] = {}
    for server, cell in cells.items():
        if server == ORIGIN:
            continue
        pairs = list(zip(_rounds(cell), d_rounds, strict=False))
        out[server] = {
            key: median([float(mine[key]) - float(base[key]) for mine, base in pairs])
            for key in ("p50_ms", "p99_ms")
        }
    return out


def _rounds(cell: Any) -> list[dict[str, float]]:
    return list(cell.rounds if isinstance(cell, Cell) else cell.get("rounds", []))


def latency_table(results: list[dict[str, Any]]) -> str:
    """The concurrency-1 rows: the origin's own latency and what each cache adds to it, in µs."""
    cols = [c for c in _columns(results)]
    ratio_cols = [p for p in ("nginx", BASELINE) if p in cols]
    head = (
        "| scenario | origin direct p50 / p99 µs "
        + f"| adds p50 µs {' / '.join(cols)} | adds p99 µs {' / '.join(cols)} | "
        + " | ".join(f"proxy/{p} adds p50 | proxy/{p} adds p99" for p in ratio_cols)
        + " | target (p50) |"
    )
    lines = [head, "|" + "---|" * (4 + 2 * len(ratio_cols) + 1)]
    for r in results:
        s, adds = r["servers"], r.get("adds", {})
        d = s.get(ORIGIN, {})

        def us(server: str, key: str, adds: dict[str, Any] = adds) -> str:
            return f"{adds[server][key] * 1000:.0f}" if server in adds else "-"

        rat = []
        for p in ratio_cols:
            for key in ("p50_ms", "p99_ms"):
                a, b = adds.get("proxy", {}).get(key, 0.0), adds.get(p, {}).get(key, 0.0)
                rat.append(fmt_ratio(a, b))
        target = r.get("target", 0.0)
        a50, n50 = adds.get("proxy", {}).get("p50_ms", 0.0), adds.get("nginx", {}).get("p50_ms", 0.0)
        verdict = "-" if not (target and n50 > 0) else ("met" if a50 <= target * n50 else "NOT met")
        lines.append(
            f"| {r['name']} | {d.get('p50_ms', 0.0) * 1000:.0f} / {d.get('p99_ms', 0.0) * 1000:.0f} "
            f"| {' / '.join(us(c, 'p50_ms') for c in cols)} | {' / '.join(us(c, 'p99_ms') for c in cols)} | "
            + " | ".join(rat)
            + f" | proxy <= {target:g}x nginx: {verdict} |"
        )
    return "\n".join(lines)


def final_summary(results: list[dict[str, Any]]) -> str:
    """Every table of the end of a run, multi-key rows first."""
    multi = [r for r in results if r.get("group") == "multi-key"]
    loaded = [r for r in multi if r.get("concurrency", 0) != 1]
    c1 = [r for r in multi if r.get("concurrency", 0) == 1]
    one = [r for r in results if r.get("group") != "multi-key"]
    parts: list[str] = []
    if loaded:
        notes = fill_notes(results)
        parts.append(
            "multi-key rows (browser-like heads, a quarter with a Cookie):\n\n"
            + headline_table(loaded)
            + ("\n\n" + "\n".join(notes) if notes else "")
        )
    if c1:
        parts.append(
            "latency at concurrency 1 (wrk -t1 -c1), what each cache adds to asking the origin "
            "directly (median over rounds of the per-round difference):\n\n" + latency_table(c1)
        )
    if one:
        parts.append("one-URL rows:\n\n" + summary_table(one))
    return "\n\n".join(parts)
