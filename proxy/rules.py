"""Per-route rules, compiled once: which rules a request (and its response) matches, and what they change.

The configuration's `rules` (proxy/config.py validates them) are an ordered
list. **Every rule whose match holds applies, in the order listed; where two
set the same action, the later one wins** (lists — tags, strip_headers,
key.drop_query, key.headers, key.cookies — add up; key.keep_query is replaced).
So a broad rule can come first and a narrower exception after it.

A rule that matches on the response (match.status / match.content_type) is
decided once the response is known: it joins the rules that matched the
request for the storing of that response. Rules compile to values the pure
functions take: `policy.Overrides` for storing, a `KeyConfig` for the key, a
bypass flag, and the names Cache-Status reports.

The hot path: the engine first asks whether the request's path is one no rule
can concern (`RuleSet.unmatched`, a set of such paths: one membership test, no
call, no allocation); else `RuleSet.match` looks the path up in a memo of the
rules whose path (or lack of one) fits it, and checks their other conditions.
On a miss of both, one combined regular expression over every path pattern says
whether any rule could match before each is tried. Both memos are bounded like
the key memo (cleared when full). Keys stay a function
of the URL alone: a rule that changes the key matches on hosts and path only
(config validation), so `Fetcher.key_for`'s memo per (scheme, host, path,
query) stays right, and a purge of a URL names the key a request for it gets
(`keys.UrlKeys`; a path on every host: each key config a host can give it,
`RuleSet.key_configs`).

Path conditions are matched against `route_path(path)`: the path as RFC 3986 normalises it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import replace

from proxy.config import KeyConfig, Rule, RuleKey
from proxy.keys import cookie_key
from proxy.messages import ClientRequest
from proxy.policy import NO_OVERRIDES, Overrides

__all__ = ["Match", "RuleSet", "glob_regex", "media_type", "route_path"]

# Paths whose candidate rules are memoised, at most (then the memo starts again).
MEMO_SIZE = 16384
# Distinct responses (status, media type) remembered per match.
RESPONSE_MEMO_SIZE = 64


def glob_regex(pattern: str) -> str:
    """A path glob as a regular expression: `**` any run, `*` any run but "/", `?` one character but "/"."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _wildcard_regex(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """Globs where `*` is any run and `?` any one character (hosts, media types), as one regex."""
    parts = ["".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p) for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL) if parts else None


_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def route_path(path: str) -> str:
    """The path a rule's path condition is matched against: the request's, normalised as RFC 3986
    §6.2.2 says equivalent URIs are (percent-encoded unreserved characters decoded, the other
    percent-encodings in upper case, dot segments removed).

    An origin routes `/api/%6De` and `/api/x/../me` as `/api/me`: matched on the raw path,
    a `bypass` rule for `/api/me` missed them while a broader caching rule (`/api/**` with a
    default_ttl) held, and the user's own answer was stored under a URL an attacker had
    lured them to (cache deception). Anything else (`%2F`, `;`, `//`, letter case) stays as
    sent: origins differ on those, and a pattern must say what it means by them.
    """
    if "%" not in path and "/." not in path:
        return path  # nearly every path: nothing to normalise
    if "%" in path:
        path = _PERCENT.sub(_percent_normal, path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def _percent_normal(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else m.group(0).upper()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: "." segments dropped, ".." removing the one before."""
    if not path.startswith("/"):
        return path
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is "/a/", a directory
    return "/" + "/".join(out)


def media_type(content_type: str | None) -> str:
    """The lower-case type/subtype of a Content-Type value ("" when there is none)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _bare_host(host: str) -> str:
    """Host without its port, lower case (an IPv6 literal keeps its brackets)."""
    host = host.strip().lower()
    if host.endswith("]") or ":" not in host:
        return host
    return host.rpartition(":")[0]


class _Compiled:
    """One rule, compiled: its conditions as regular expressions and sets."""

    __slots__ = (
        "content_types",
        "headers",
        "hosts",
        "index",
        "methods",
        "name",
        "on_response",
        "path",
        "path_search",
        "request_only_path",
        "rule",
        "statuses",
    )

    def __init__(self, index: int, rule: Rule) -> None:
        m = rule.match
        self.index = index
        self.rule = rule
        self.name = rule.name
        self.path: re.Pattern[str] | None = None
        self.path_search = False
        if m.path is not None:
            self.path = re.compile(glob_regex(m.path) + r"\Z", re.DOTALL)
        elif m.path_regex is not None:
            self.path = re.compile(m.path_regex)
            self.path_search = True
        self.hosts = _wildcard_regex(m.hosts)
        self.methods = frozenset(m.methods)
        self.headers = tuple((name, want) for name, want in m.headers)
        self.statuses = frozenset(m.status)
        self.content_types = _wildcard_regex(m.content_type)
        self.on_response = m.on_response
        # Decided by the path alone (no host, method or header condition): memoised with it.
        self.request_only_path = not (m.hosts or m.methods or m.headers)

    def path_fits(self, path: str) -> bool:
        pattern = self.path
        if pattern is None:
            return True
        return (pattern.search(path) if self.path_search else pattern.match(path)) is not None

    def fits_request(self, req: ClientRequest) -> bool:
        """The request conditions besides the path (which the caller checked)."""
        if self.methods and req.method not in self.methods:
            return False
        if self.hosts is not None and self.hosts.match(_bare_host(req.host)) is None:
            return False
        if self.headers:
            headers = req.headers
            for name, want in self.headers:
                if want is True or want is False:
                    if (name in headers) is not want:
                        return False
                elif ", ".join(headers.getall(name, [])).strip() != want:
                    return False
        return True

    def fits_url(self, host: str, path: str) -> bool:
        """For key rules (which match on hosts and path only)."""
        if self.hosts is not None and self.hosts.match(_bare_host(host)) is None:
            return False
        return self.path_fits(path)

    def fits_response(self, status: int, media: str) -> bool:
        if self.statuses and status not in self.statuses:
            return False
        return self.content_types is None or self.content_types.match(media) is not None


class Match:
    """The rules one request matched, merged: what they change for it and what Cache-Status calls them."""

    __slots__ = ("_request", "_responses", "bypass", "label", "overrides", "responsive", "rules")

    def __init__(self, rules: tuple[_Compiled, ...]) -> None:
        # In order; the response rules among them still wait for the response.
        self.rules = rules
        requested = tuple(c for c in rules if not c.on_response)
        self.overrides, self.bypass = _merge(requested)
        self.label = " ".join(c.name for c in requested) or None
        self.responsive = any(c.on_response for c in rules)
        self._request = (self.overrides, self.label)  # the answer when no rule waits for the response
        self._responses: dict[tuple[int, str], tuple[Overrides, str | None]] = {}

    def for_response(self, status: int, content_type: str | None) -> tuple[Overrides, str | None]:
        """The overrides for storing a response with this status and Content-Type, and the rules' names."""
        if not self.responsive:
            return self._request
        media = media_type(content_type)
        found = self._responses.get((status, media))
        if found is None:
            applied = tuple(c for c in self.rules if not c.on_response or c.fits_response(status, media))
            overrides, _ = _merge(applied)
            found = (overrides, " ".join(c.name for c in applied) or None)
            if len(self._responses) >= RESPONSE_MEMO_SIZE:
                self._responses.clear()
            self._responses[(status, media)] = found
        return found

    def for_stored(self, status: int, headers: Iterable[tuple[str, str]]) -> tuple[Overrides, str | None]:
        """for_response for a stored response (its fields as pairs)."""
        if not self.responsive:
            return self._request
        content_type = next((v for n, v in headers if n.lower() == "content-type"), None)
        return self.for_response(status, content_type)

    def __repr__(self) -> str:
        return f"Match({[c.name for c in self.rules]})"


def _merge(rules: Sequence[_Compiled]) -> tuple[Overrides, bool]:
    """The rules' actions in order, a later one over an earlier one; lists add up."""
    if not rules:
        return NO_OVERRIDES, False
    o = NO_OVERRIDES
    bypass = False
    tags: list[str] = []
    strip: set[str] = set()
    vary: list[str] = []
    for c in rules:
        r = c.rule
        any_status = bool(c.statuses)
        if r.ttl is not None:
            o = replace(o, ttl=r.ttl, ttl_any_status=any_status)
        if r.default_ttl is not None:
            o = replace(o, default_ttl=r.default_ttl, default_ttl_any_status=any_status)
        if r.cache_private is not None:
            o = replace(o, store_private=r.cache_private)
        if r.stale_while_revalidate is not None:
            o = replace(o, stale_while_revalidate=r.stale_while_revalidate)
        if r.stale_if_error is not None:
            o = replace(o, stale_if_error=r.stale_if_error)
        if r.bypass is not None:
            bypass = r.bypass
        tags.extend(t for t in r.tags if t not in tags)
        strip.update(n.lower() for n in r.strip_headers)
        if r.key is not None:
            for name in (*(h.lower() for h in r.key.headers), *map(cookie_key, r.key.cookies)):
                if name not in vary:
                    vary.append(name)
    o = replace(o, tags=tuple(tags), strip=frozenset(strip), vary=tuple(vary))
    return (NO_OVERRIDES if o == NO_OVERRIDES else o), bypass


class RuleSet:
    """The configuration's rules, compiled once (at start and on reload)."""

    def __init__(self, rules: Sequence[Rule], keys: KeyConfig) -> None:
        self.keys = keys
        self.compiled = tuple(_Compiled(i, rule) for i, rule in enumerate(rules))
        # Rules with no path condition are candidates for every path.
        self._pathless = tuple(c for c in self.compiled if c.path is None)
        self._prefilter = _prefilter(c for c in self.compiled if c.path is not None)
        # Paths no rule can match (none has a fitting path condition, and every rule has one).
        self.unmatched: set[str] = set()
        # path -> the rules whose path condition fits it (and their Match when nothing else decides).
        self._by_path: dict[str, tuple[tuple[_Compiled, ...], Match | None]] = {}
        self._matches: dict[tuple[int, ...], Match] = {}
        self._key_rules = tuple(
            c
            for c in self.compiled
            if c.rule.key is not None
            and (c.rule.key.drop_query or c.rule.key.keep_query or c.rule.key.sort_query is not None)
        )
        self._key_configs: dict[tuple[int, ...], KeyConfig] = {}

    def __len__(self) -> int:
        return len(self.compiled)

    # ----------------------------------------------------------------- requests

    def match(self, req: ClientRequest) -> Match | None:
        """The rules this request matches (None: none). No allocation when none could.

        Callers on the hot path test `req.path in self.unmatched` first, which saves the call.
        """
        path = req.path
        if path in self.unmatched:
            return None
        found = self._by_path.get(path)
        if found is None:
            found = self._remember(path)
        candidates, decided = found
        if decided is not None or not candidates:
            return decided
        indices = tuple(c.index for c in candidates if c.request_only_path or c.fits_request(req))
        return self._match_of(indices) if indices else None

    def _remember(self, path: str) -> tuple[tuple[_Compiled, ...], Match | None]:
        # Memoised by the path as sent (the hot path's lookup), matched as the origin routes it.
        candidates = self._candidates(route_path(path))
        if not candidates:
            if len(self.unmatched) >= MEMO_SIZE:
                self.unmatched.clear()
            self.unmatched.add(path)
            return candidates, None
        decided = None
        if all(c.request_only_path for c in candidates):
            decided = self._match_of(tuple(c.index for c in candidates))
        if len(self._by_path) >= MEMO_SIZE:
            self._by_path.clear()
        found = self._by_path[path] = (candidates, decided)
        return found

    def _candidates(self, path: str) -> tuple[_Compiled, ...]:
        prefilter = self._prefilter
        if prefilter is not None and prefilter.match(path) is None:
            return self._pathless
        return tuple(c for c in self.compiled if c.path_fits(path))

    def _match_of(self, indices: tuple[int, ...]) -> Match:
        found = self._matches.get(indices)
        if found is None:
            if len(self._matches) >= MEMO_SIZE:
                self._matches.clear()
            found = self._matches[indices] = Match(tuple(self.compiled[i] for i in indices))
        return found

    # --------------------------------------------------------------------- keys

    def key_config(self, host: str, path: str) -> KeyConfig:
        """The key settings for a URL: keys.* with the key rules that match it (hosts and path only)."""
        if not self._key_rules:
            return self.keys
        path = route_path(path)
        indices = tuple(c.index for c in self._key_rules if c.fits_url(host, path))
        if not indices:
            return self.keys
        found = self._key_configs.get(indices)
        if found is None:
            found = self._key_config(indices)
            if len(self._key_configs) >= MEMO_SIZE:
                self._key_configs.clear()
            self._key_configs[indices] = found
        return found

    def key_configs(self, path: str) -> tuple[KeyConfig, ...]:
        """Every key config some host gives this path (a path meaning every host: a purge of "/a?b=1").

        The key rules whose path fits it apply in order: one without a hosts condition on every
        host, one with either applying or not. Distinct configs only (one when no such rule names
        hosts), in a stable order.
        """
        configs = [self.keys]
        path = route_path(path)
        for c in self._key_rules:
            if not c.path_fits(path):
                continue
            key = c.rule.key
            assert key is not None
            applied = [_with_key(cfg, key) for cfg in configs]
            configs = list(dict.fromkeys(applied if c.hosts is None else configs + applied))
        return tuple(configs)

    def _key_config(self, indices: tuple[int, ...]) -> KeyConfig:
        cfg = self.keys
        for i in indices:
            key = self.compiled[i].rule.key
            assert key is not None
            cfg = _with_key(cfg, key)
        return cfg


def _with_key(cfg: KeyConfig, key: RuleKey) -> KeyConfig:
    """cfg as one more key rule changes it: drop_query adds up, keep_query and sort_query replace."""
    drop = list(cfg.ignore_query_params)
    drop.extend(p for p in key.drop_query if p not in drop)
    keep = key.keep_query or cfg.keep_query_params
    sort = cfg.sort_query if key.sort_query is None else key.sort_query
    return replace(cfg, ignore_query_params=tuple(drop), keep_query_params=keep, sort_query=sort)


def _prefilter(rules: Iterable[_Compiled]) -> re.Pattern[str] | None:
    """One regular expression that matches a path when any of these rules' path conditions could.

    None when there are none, or when they cannot be combined (a pattern with a
    group name another one uses too): then each rule is tried on its own.
    """
    parts = []
    for c in rules:
        assert c.path is not None
        pattern = c.path.pattern
        parts.append(f"(?:.*?(?:{pattern}))" if c.path_search else f"(?:{pattern})")
    if not parts:
        return None
    try:
        return re.compile("|".join(parts), re.DOTALL)
    except re.error:
        return None
