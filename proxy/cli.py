"""The `minicdn` command line: run an edge, the stub origin, or both for a demo; purge, inspect, stats.

`minicdn serve` (also `python -m proxy`) runs one edge and its admin API;
`minicdn origin` (also `python -m origin_stub`) runs the stub origin;
`minicdn up` runs both in one process, the edge in front of the stub, for a
first look. `minicdn purge`, `minicdn inspect` and `minicdn stats` talk to a
running edge's admin API (exit 0: done, 1: the API failed or could not be
reached, 2: a usage or configuration error).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy import cliargs, figures, log_output
from proxy.admin import MAX_LIMIT
from proxy.admin_client import AdminClient, AdminClientError, url_for_listen
from proxy.config import (
    Config,
    ConfigError,
    check_admin,
    check_base_url,
    load_config,
    parse_listen,
    token_problem,
)
from proxy.node import NodeFactory, open_node
from proxy.purge import PurgeRequestError, parse_purge_request
from proxy.supervisor import supervise


def _serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file (default: $MINICDN_CONFIG, else the built-in defaults)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (overrides the config)")
    parser.add_argument("--origin", help="origin URL, e.g. http://127.0.0.1:8081 (overrides the config)")
    parser.add_argument("--cache-dir", help="directory of the L2 disk tier (overrides the config)")
    parser.add_argument("--admin-listen", help="HOST:PORT of the admin API (overrides the config)")
    parser.add_argument(
        "--workers",
        type=cliargs.count(0, 256),
        help="worker processes sharing the port (overrides the config; 0: one per core)",
    )


serve_arguments = _serve_args  # `python -m edge` parses the same arguments


def _admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="config file to find the admin API in (default: $MINICDN_CONFIG, else the defaults)"
    )
    parser.add_argument("--admin", metavar="URL", help="admin API URL (default: http:// + admin.listen)")
    parser.add_argument(
        "--token", help="admin bearer token (default: $MINICDN_ADMIN_TOKEN, then admin.token of the config)"
    )
    parser.add_argument(
        "--timeout", type=cliargs.positive_seconds, default=10.0, help="seconds to wait for the API (10)"
    )


def _watch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval", type=cliargs.positive_seconds, default=2.0, help="seconds between samples (2)"
    )
    parser.add_argument(
        "--count", type=cliargs.count(1, 1_000_000), help="stop after this many samples (default: Ctrl-C)"
    )


def _admin_commands(sub: Any) -> None:
    purge = sub.add_parser("purge", help="purge cached entries through the admin API")
    kind = purge.add_mutually_exclusive_group(required=True)
    kind.add_argument("--url", nargs="+", action="extend", metavar="URL", help="exact URL(s) or /path(s)")
    kind.add_argument("--prefix", nargs="+", action="extend", metavar="P", help="URL or /path prefix(es)")
    kind.add_argument("--tag", nargs="+", action="extend", metavar="T", help="surrogate key(s) / tag(s)")
    kind.add_argument("--all", action="store_true", help="everything")
    purge.add_argument("--soft", action="store_true", help="mark stale instead of deleting")
    _admin_args(purge)

    inspect = sub.add_parser("inspect", help="list cached entries (by prefix or tag)")
    which = inspect.add_mutually_exclusive_group()
    which.add_argument("--prefix", help="URL or /path prefix")
    which.add_argument("--tag", help="surrogate key / tag")
    inspect.add_argument(
        "--limit",
        type=cliargs.count(1, MAX_LIMIT),
        default=100,
        help=f"at most this many (1-{MAX_LIMIT}, 100)",
    )
    inspect.add_argument("--json", action="store_true", help="print the API's JSON")
    _admin_args(inspect)

    stats = sub.add_parser("stats", help="show the node's counters (summed over its workers)")
    stats.add_argument("--json", action="store_true", help="print the API's JSON")
    stats.add_argument("--watch", action="store_true", help="refresh the figures, as `minicdn top`")
    _watch_args(stats)
    _admin_args(stats)

    top = sub.add_parser(
        "top",
        help="the node's figures in the terminal, refreshed: rates, hit ratio, latency, tiers, hot keys",
    )
    _watch_args(top)
    _admin_args(top)

    reload = sub.add_parser(
        "reload", help="re-read the config and replace the workers (like SIGHUP to the node's supervisor)"
    )
    _admin_args(reload)


@dataclass(frozen=True)
class ExtraCommand:
    """A subcommand another layer adds (the edge layer adds `cluster`)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def build_parser(extra: Mapping[str, ExtraCommand] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicdn", description="HTTP caching reverse proxy and mini-CDN")
    cliargs.add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in (extra or {}).items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    _serve_args(sub.add_parser("serve", help="run one edge node in front of the origin"))
    up = sub.add_parser("up", help="run the stub origin and one edge in front of it (demo)")
    _serve_args(up)
    up.add_argument("--origin-listen", default="127.0.0.1:8081", help="HOST:PORT of the stub origin")
    origin = sub.add_parser("origin", help="run the stub origin")
    origin.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8081)")
    origin.add_argument("--config", help="config file (its origin_stub.listen)")
    _admin_commands(sub)
    return parser


def load(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    return cfg.with_overrides(
        listen=args.listen, origin=args.origin, cache_dir=args.cache_dir, admin_listen=args.admin_listen
    )


def setup_logging(cfg: Config) -> None:
    log_output.install(cfg.log.level, cfg.log.format)


def main(
    argv: Sequence[str] | None = None,
    node_factory: NodeFactory = open_node,
    extra: Mapping[str, ExtraCommand] | None = None,
) -> int:
    try:
        args = build_parser(extra).parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2, message printed)
        return exc.code if isinstance(exc.code, int) else 2
    if extra and args.command in extra:
        return extra[args.command].run(args)
    if args.command in ("purge", "inspect", "stats", "reload", "top"):
        return admin_main(args)
    if args.command == "origin":
        from origin_stub.cli import main as origin_main

        forwarded = []
        if args.listen:
            forwarded += ["--listen", args.listen]
        if args.config:
            forwarded += ["--config", args.config]
        return origin_main(forwarded, prog="minicdn origin")
    origin_listen = args.origin_listen if args.command == "up" else None
    try:
        cfg = load(args)
        check_admin(cfg)
        if origin_listen is not None:
            # Checked as --listen is: "nonsense" was an int() traceback when the stub started.
            parse_listen(origin_listen, "command line: --origin-listen")
            if args.origin is None:
                cfg = cfg.with_overrides(origin=url_for_listen(origin_listen))
    except ConfigError as exc:
        print(f"minicdn: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    if args.workers is not None:
        cfg = dataclasses.replace(cfg, workers=args.workers)
    elif args.command == "up":
        cfg = dataclasses.replace(cfg, workers=1)  # the demo: one process, one L1 for the curl session
    workers = cfg.workers or os.cpu_count() or 1

    def reread() -> Config:
        """The config as at start (file, environment, command line), read again for a reload."""
        fresh = load(args)
        if origin_listen is not None and args.origin is None:
            fresh = fresh.with_overrides(origin=url_for_listen(origin_listen))
        if args.workers is not None or args.command == "up":
            fresh = dataclasses.replace(fresh, workers=cfg.workers)
        return fresh

    return supervise(cfg, node_factory, workers=workers, reload_config=reread, origin_listen=origin_listen)


def proxy_main(argv: Sequence[str] | None = None) -> int:
    """`python -m proxy [--listen ...]`: the same as `minicdn serve`."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = cliargs.check_usage("python -m proxy", _serve_args, args)  # --help under its own name
    return code if code is not None else main(["serve", *args])


# --------------------------------------------------------------------------- admin commands


class _UsageError(Exception):
    pass


def admin_main(args: argparse.Namespace) -> int:
    """`minicdn purge / inspect / stats / reload / top`: admin API calls, printed for a person (or --json)."""
    try:
        client = _admin_client(args)
        if args.command == "purge":
            return _purge(client, args)
        if args.command == "inspect":
            return _inspect(client, args)
        if args.command == "reload":
            return _reload(client)
        if args.command == "top" or args.watch:
            from proxy import top  # rich is imported only for this

            return top.run(client, interval=args.interval, count=args.count)
        return _stats(client, args)
    except _UsageError as exc:
        print(f"minicdn {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"minicdn: config error: {exc}", file=sys.stderr)
        return 2
    except AdminClientError as exc:
        print(f"minicdn: {exc}", file=sys.stderr)
        return 1
    except (TypeError, ValueError, AttributeError) as exc:  # JSON of an unexpected shape
        print(f"minicdn: unexpected answer from the admin API: {exc}", file=sys.stderr)
        return 1


def _admin_client(args: argparse.Namespace) -> AdminClient:
    token: str | None = args.token if args.token is not None else os.environ.get("MINICDN_ADMIN_TOKEN")
    cfg: Config | None = None
    if args.config is not None or args.admin is None or token is None:
        try:
            cfg = load_config(args.config)
        except ConfigError:
            if args.config is not None or args.admin is None:
                raise
            # --admin was given: the default config file was only a place to look for a token.
    if token is None and cfg is not None:
        token = cfg.admin.token
    if token and (problem := token_problem(token)):
        # Refused here: urllib's "Invalid header value" error would print the token.
        raise _UsageError(f"the admin token (--token or MINICDN_ADMIN_TOKEN) {problem}")
    if args.admin is not None:
        try:  # the origin URL's rule: each route's path is appended to it
            base = check_base_url(args.admin, "--admin")
        except ConfigError as exc:
            raise _UsageError(str(exc)) from None
    else:
        assert cfg is not None
        base = url_for_listen(cfg.admin.listen)
    return AdminClient(base, token or None, args.timeout)


def _purge(client: AdminClient, args: argparse.Namespace) -> int:
    body: dict[str, Any]
    if args.all:
        body = {"all": True}
    elif args.url:
        body = {"urls": args.url}
    elif args.prefix:
        body = {"prefixes": args.prefix}
    else:
        body = {"tags": args.tag}
    if args.soft:
        body["soft"] = True
    try:
        parse_purge_request(body)  # the server checks too; a bad value is a usage error here
    except PurgeRequestError as exc:
        raise _UsageError(str(exc)) from None
    result = client.purge(body)
    purged, epoch = result.get("purged"), result.get("epoch")
    verb = "soft-purged (marked stale)" if args.soft else "purged"
    if args.all:
        print(f"{verb} everything (epoch {epoch})")
    else:
        print(f"{verb} {_plural(purged, 'entry', 'entries')} (epoch {epoch})")
    if result.get("warning"):  # done here only, or not passed on to the other edges (yet)
        print(f"minicdn purge: warning: {result['warning']}", file=sys.stderr)
    return 0


def _inspect(client: AdminClient, args: argparse.Namespace) -> int:
    for name in ("prefix", "tag"):
        value = getattr(args, name)
        if value is not None:
            try:
                parse_purge_request({name: value})
            except PurgeRequestError as exc:
                raise _UsageError(str(exc)) from None
    entries = client.entries(prefix=args.prefix, tag=args.tag, limit=args.limit)
    if args.json:  # URLs and tags are a client's and an origin's text: nothing that reorders the screen
        print(log_output.printable_json(json.dumps(entries, indent=2, ensure_ascii=False)))
        return 0
    if not entries:
        print("no entries")
        return 0
    rows = [("URL", "TIER", "VARIANTS", "SIZE", "AGE", "TTL", "TAGS")]
    rows += [_entry_row(e) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)  # text left, numbers right
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, row[-1]]).rstrip())
    more = " (the limit; --limit shows more)" if len(entries) >= args.limit else ""
    print(f"{_plural(len(entries), 'entry', 'entries')}{more}")
    return 0


def _entry_row(entry: dict[str, Any]) -> tuple[str, str, str, str, str, str, str]:
    variants = [v for v in entry.get("variants", []) if isinstance(v, dict)]
    ages = [int(v.get("age", 0)) for v in variants]
    ttls = [int(v.get("ttl", 0)) for v in variants]
    tags = sorted({str(t) for v in variants for t in v.get("tags", [])})
    return (
        log_output.printable(str(entry.get("url", entry.get("key", "?")))),
        str(entry.get("tier") or "-"),
        str(len(variants)),
        _bytes(int(entry.get("size", 0))),
        f"{min(ages)}s" if ages else "-",  # the youngest variant
        f"{max(ttls)}s" if ttls else "-",  # the longest-lived one
        log_output.printable(",".join(tags)) or "-",
    )


def _reload(client: AdminClient) -> int:
    result = client.reload()
    print(result.get("message", "reloaded"))
    return 0


def _stats(client: AdminClient, args: argparse.Namespace) -> int:
    stats = client.stats()
    if args.json:
        print(log_output.printable_json(json.dumps(stats, indent=2, ensure_ascii=False)))
        return 0
    tiers = stats.get("tiers") or {}
    groups: list[tuple[str, Any]] = [
        ("engine", stats.get("engine")),
        ("l1", tiers.get("l1")),
        ("l2", tiers.get("l2")),
        ("storage", stats.get("storage")),
        ("purge", stats.get("purge")),
        ("catalog", stats.get("catalog")),
    ]
    # traffic (histograms, hot keys), box and budgets are summed up below, not listed.
    known = {"name", "tiers", "workers", "per_worker", "traffic", "box", "budgets", *(n for n, _ in groups)}
    groups += [(name, values) for name, values in stats.items() if name not in known]  # e.g. "edge"
    print(f"node     {stats.get('name', '?')}")
    if "workers" in stats:
        print(f"workers  {stats['workers']} (the numbers below are their sum)")
    for line in _traffic_lines(stats):
        print(line)
    for name, values in groups:
        if values is None:
            print(f"{name:<8} disabled")
        elif isinstance(values, dict):
            print(f"{name:<8} {_counters(name, values)}")
        else:
            print(f"{name:<8} {values}")
    for row in stats.get("per_worker") or []:
        if isinstance(row, dict):
            counts = "  ".join(f"{k} {v}" for k, v in row.items() if k not in ("worker", "pid", "generation"))
            print(f"worker {row.get('worker', '?')}  pid {row.get('pid', '?')}  {counts}")
    return 0


def _traffic_lines(stats: dict[str, Any]) -> list[str]:
    """Answers by result and tier, statuses, bytes, latency and the origin, since the box started."""
    traffic = figures.section(stats, "traffic")
    if not traffic:
        return []
    started = figures.section(stats, "box").get("started")
    lines = []
    if isinstance(started, int | float):
        lines.append(f"uptime   {figures.duration(time.time() - started)}")
    answers = [
        f"{result} {figures.number(figures.total(tiers))}"
        + (f" ({', '.join(f'{t} {n}' for t, n in tiers.items())})" if len(tiers) > 1 else "")
        for result, tiers in figures.section(traffic, "requests").items()
        if isinstance(tiers, dict)
    ]
    lines.append("answers  " + "  ".join(answers))
    statuses = "  ".join(f"{c} {n}" for c, n in figures.section(traffic, "responses").items())
    served = figures.section(traffic, "served_bytes")
    lines.append(
        f"statuses {statuses}  served {figures.size(served.get('cache', 0))} from cache, "
        f"{figures.size(served.get('origin', 0))} from the origin"
    )
    latency = figures.latency(stats)
    lines.append(
        "latency  "
        + "  ".join(f"{q} {figures.seconds(figures.quantile(v, latency))}" for q, v in _QUANTILES)
        + " (since start)"
    )
    origin = figures.section(traffic, "origin_requests").get("origin") or {}
    outcomes = "  ".join(f"{k} {v}" for k, v in origin.items()) or "none"
    delay = figures.origin_latency(stats)
    lines.append(
        f"origin   {outcomes}  to the response head: "
        + "  ".join(f"{q} {figures.seconds(figures.quantile(v, delay))}" for q, v in _QUANTILES)
    )
    hot = figures.section(traffic, "hot_keys")
    if hot:
        top = sorted(hot.items(), key=lambda kv: -float(kv[1]))[:5]
        lines.append("hot      " + "  ".join(f"{log_output.printable(str(key))} ({n})" for key, n in top))
    return lines


_QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


def _counters(group: str, values: dict[str, Any]) -> str:
    parts = [f"{key} {_bytes(value) if key == 'bytes' else value}" for key, value in _flat(values)]
    if group == "engine":
        looked_up = int(values.get("hits", 0)) + int(values.get("misses", 0))
        if looked_up:
            parts.insert(1, f"hit_ratio {100 * int(values.get('hits', 0)) / looked_up:.1f}%")
    return "  ".join(parts)


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested sections as dotted names: {"routing": {"local": 3}} -> [("routing.local", 3)]."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _plural(n: object, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
