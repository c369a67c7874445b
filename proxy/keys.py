"""Pure cache-key construction and Vary matching (RFC 9111 §2, §4.1).

The primary key is the method class (GET and HEAD share one), scheme, host
(lower-cased, default port removed), path and query (kept as is, or sorted,
or with listed parameters dropped), under a configurable namespace. Variants
of one key are told apart by the request headers that Vary nominates, after
normalisation; Accept-Encoding is reduced to one preferred coding first so
that a thousand browser spellings make one variant, and Accept-Language is
written one canonical way (the origin is sent that same value on cache fetches).

`UrlKeys` is how one node keys a URL, with the key settings the per-route
rules give it: requests and purges go through it alike.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from operator import itemgetter
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode

from proxy.config import KeyConfig
from proxy.entry import CachedResource, StoredResponse
from proxy.headers import Headers, bounded_decimal, parse_http_date

if TYPE_CHECKING:
    from proxy.rules import RuleSet

_DEFAULT_PORTS = {"http": 80, "https": 443}
_WS_RE = re.compile(r"[ \t]+")
_COMMA_RE = re.compile(r"[ \t]*,[ \t]*")


def key_host(client_host: str, host_header: str, origin_authority: str) -> str:
    """The host in cache keys: exactly what the origin sees as Host.

    With `origin.host_header: origin` the origin never sees the client's Host,
    so keying on it would only split one object into one entry per spelling
    (and per edge port); with `client` it is part of the request.
    """
    if host_header == "client" and client_host:
        return client_host
    return origin_authority


class UrlKeys:
    """The primary key of a URL as one node spells it: a request's and a purge's alike.

    `keys.*` as the per-route rules change them for the URL (`RuleSet.key_config`: hosts and
    path only, so the key stays a function of the URL), under the host keys use for it
    (`key_host`). `Fetcher.key_for` keys requests with it, the purger names with it the URLs a
    purge gives and an unsafe request invalidates: a purge of the URL a client used finds what
    that client's request stored.
    """

    __slots__ = ("host_header", "keys", "origin_authority", "rules")

    def __init__(
        self, keys: KeyConfig, rules: RuleSet | None, host_header: str, origin_authority: str
    ) -> None:
        self.keys = keys
        self.rules = rules  # None: no rules configured
        self.host_header = host_header
        self.origin_authority = origin_authority

    def host(self, client_host: str) -> str:
        """The host keys use for a URL whose host (or a request's Host) is `client_host`."""
        return key_host(client_host, self.host_header, self.origin_authority)

    def config(self, host: str, path: str) -> KeyConfig:
        """keys.* as the rules that match this URL change them."""
        rules = self.rules
        return rules.key_config(host, path) if rules is not None else self.keys

    def key(self, scheme: str, host: str, path: str, query: str) -> str:
        """The primary key of scheme://host{path}?{query}: raw (percent-encoded) parts, the host as
        the client names it (a request's Host, a URL's authority)."""
        return primary_key(scheme, self.host(host), path, query, self.config(host, path))

    def targets(self, target: str) -> tuple[str, ...]:
        """A path and query meaning every host ("/a?b=1"), as the keys of that URL spell them after
        their host: one spelling per key config a host can give that path (one without rules that
        name hosts). Spellings another host's key config gives can name another URL on that host,
        which a purge then covers too: a purge may remove more than asked, never less."""
        path, _, query = target.partition("?")
        rules = self.rules
        configs = rules.key_configs(path) if rules is not None else (self.keys,)
        return tuple(dict.fromkeys(key_target(path, query, opts) for opts in configs))


def primary_key(scheme: str, host: str, path: str, query: str, opts: KeyConfig) -> str:
    """The primary cache key for a GET/HEAD request (RFC 9111 §2).

    `host` is the Host header value (may carry a port); `path` and `query` are
    the raw (still percent-encoded) request-target parts. Memoised for short
    targets (the same URLs are keyed over and over on the hit path); long ones,
    which a client could vary endlessly, are not kept.
    """
    if len(path) + len(query) + len(host) <= 512:
        return _memoised_primary_key(scheme, host, path, query, opts)
    return _primary_key(scheme, host, path, query, opts)


@functools.lru_cache(maxsize=16384)
def _memoised_primary_key(scheme: str, host: str, path: str, query: str, opts: KeyConfig) -> str:
    return _primary_key(scheme, host, path, query, opts)


def _primary_key(scheme: str, host: str, path: str, query: str, opts: KeyConfig) -> str:
    scheme = scheme.lower()
    hostname = host.strip().lower()
    # Remove the default port: example.com:80 and example.com are one origin.
    if hostname.endswith("]"):  # IPv6 literal without a port
        pass
    elif ":" in hostname:
        name, _, port = hostname.rpartition(":")
        if port.isascii() and port.isdigit() and bounded_decimal(port, 65536) == _DEFAULT_PORTS.get(scheme):
            hostname = name
    return f"{opts.namespace}|{scheme}://{hostname}{key_target(path, query, opts)}"


def key_target(path: str, query: str, opts: KeyConfig) -> str:
    """The path and query as a key spells them (after its host): the query normalised by `opts`."""
    query = normalise_query(query, opts)
    target = path or "/"
    if query:
        target += "?" + query
    return target


def normalise_query(query: str, opts: KeyConfig) -> str:
    """Apply the configured query handling: keep / drop listed parameters, optionally sort."""
    if not query or not (opts.sort_query or opts.ignore_query_params or opts.keep_query_params):
        return query
    if ";" in query:
        # Parameter cloaking: parse_qsl splits on "&" only, but Rack 2, Go before 1.17 and
        # older Pythons split on ";" too, so `?utm_source=x;callback=evil` was one dropped
        # parameter here (key: no query) and a callback at the origin, its answer stored for
        # everyone. A query with ";" is keyed exactly as sent: a miss more, never a poisoned key.
        return query
    # surrogateescape: bytes that are not UTF-8 (%FF) survive the round trip instead of
    # all becoming U+FFFD, which would give distinct URLs one key.
    pairs = parse_qsl(query, keep_blank_values=True, errors="surrogateescape")
    if opts.keep_query_params:
        pairs = [(k, v) for k, v in pairs if any(fnmatchcase(k, pat) for pat in opts.keep_query_params)]
    if opts.ignore_query_params:
        pairs = [(k, v) for k, v in pairs if not any(fnmatchcase(k, pat) for pat in opts.ignore_query_params)]
    if opts.sort_query:
        # By name only (a stable sort): `?id=2&id=1` and `?id=1&id=2` are different requests to an
        # origin that takes the first (or the last) value.
        pairs.sort(key=itemgetter(0))
    return urlencode(pairs, errors="surrogateescape")


@functools.lru_cache(maxsize=4096)
def _normalised_accept_encoding(value: str, preferred: tuple[str, ...]) -> str:
    return _reduce_accept_encoding(value, preferred)


def normalise_accept_encoding(value: str | None, preferred: Iterable[str]) -> str:
    """Reduce Accept-Encoding to the preferred coding the client wants most, else "identity".

    Memoised: a few browser spellings make up nearly all requests.
    """
    if not value:
        return "identity"
    if len(value) > 512:
        return _reduce_accept_encoding(value, tuple(preferred))
    return _normalised_accept_encoding(value, tuple(preferred))


def _reduce_accept_encoding(value: str | None, preferred: Iterable[str]) -> str:
    """Reduce Accept-Encoding to the preferred coding the client wants most, else "identity".

    RFC 9110 §12.5.3: a coding with q=0 is not acceptable; "*" accepts any
    coding not listed (identity included); of the acceptable ones, the highest
    q-value wins, and `preferred` (this cache's order) breaks ties. "identity"
    competes only when listed (itself or through "*"): unlisted, it is what is
    left when no preferred coding is acceptable. When nothing is acceptable, not
    even identity (`identity;q=0`), the answer is still "identity": §12.5.3 says to
    send a response without a content coding rather than fail the request.
    """
    if not value:
        return "identity"
    accepted = _weights(value)
    star = accepted.get("*")
    best, best_q = "identity", 0.0
    for coding in preferred:
        q = accepted.get(coding, star or 0.0)
        if q > best_q:
            best, best_q = coding, q
    identity_q = accepted.get("identity", star)
    if identity_q is not None and identity_q > best_q:
        return "identity"
    return best


def _weights(value: str) -> dict[str, float]:
    """Accept-Encoding's codings (lower-cased) and their q-values; a coding listed twice: the last."""
    accepted: dict[str, float] = {}
    for part in value.split(","):
        coding, *params = part.strip().split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            name, _, arg = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(arg)
                except ValueError:
                    q = 0.0
        accepted[coding] = q
    return accepted


def accept_encoding_for_range(value: str | None, preferred: Iterable[str]) -> str:
    """The reduced Accept-Encoding of a Range request to a cache that compresses: "identity"
    whenever the client accepts a response without a coding (ranges are answered from the identity
    variant), else normalise_accept_encoding's choice.

    RFC 9110 §12.5.3: `identity;q=0`, or `*;q=0` without identity listed, refuses it; such a client
    is answered from the coding it accepts (its range of that variant's bytes), as it would be
    without Range, not with bytes it said it cannot take.
    """
    if not value:
        return "identity"
    accepted = _weights(value)
    identity_q = accepted.get("identity", accepted.get("*"))
    if identity_q is None or identity_q > 0:
        return "identity"
    return normalise_accept_encoding(value, preferred)


# RFC 4647 §2.1: a basic language range; RFC 9110 §12.4.2: a weight.
_LANGUAGE_RANGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*")
_WEIGHT = re.compile(r"[ \t]*;[ \t]*[qQ]=(0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")


def normalise_accept_language(value: str | None) -> str | None:
    """Accept-Language written one canonical way, or None if it is not a plain list of weighted ranges.

    Only what cannot change the answer of an origin that follows RFC 9110 §12.5.4
    changes: case (language tags are case-insensitive, RFC 5646 §2.1.1; written in
    its conventional case, "en-US", "zh-Hant-TW"), spaces, empty list elements,
    q-value spelling ("q=1.0" and no q are the same; "q=0.50" is "q=0.5"), and the
    order of ranges with different weights (highest first). Ranges of equal weight
    keep their order, which some origins read as a preference. Anything else (other
    parameters, a bad q-value, a range listed twice) returns None: the value is then
    keyed and forwarded as it is. Memoised for short values.
    """
    if value is None:
        return None
    if len(value) > 512:
        return _canonical_accept_language(value)
    return _memoised_accept_language(value)


@functools.lru_cache(maxsize=4096)
def _memoised_accept_language(value: str) -> str | None:
    return _canonical_accept_language(value)


def _canonical_accept_language(value: str) -> str | None:
    ranges: list[tuple[int, str]] = []  # (weight in thousandths, canonical range)
    seen: set[str] = set()
    for element in value.split(","):
        element = element.strip(" \t")
        if not element:
            continue  # RFC 9110 §5.6.1: empty list elements are ignored
        m = _LANGUAGE_RANGE.match(element)
        if m is None:
            return None
        weight = 1000
        rest = element[m.end() :]
        if rest:
            w = _WEIGHT.fullmatch(rest)
            if w is None:
                return None
            whole, _, fraction = w.group(1).partition(".")
            weight = int(whole) * 1000 + int((fraction + "000")[:3])
        tag = _conventional_case(m.group(0))
        if tag.lower() in seen:
            return None
        seen.add(tag.lower())
        ranges.append((weight, tag))
    ranges.sort(key=lambda r: -r[0])  # stable: equal weights keep the client's order
    return ",".join(tag if weight == 1000 else f"{tag};q={_qvalue(weight)}" for weight, tag in ranges)


def _conventional_case(tag: str) -> str:
    """RFC 5646 §2.1.1: language lower, script title, region upper case; from a singleton on, lower."""
    subtags = tag.lower().split("-")
    out = [subtags[0]]
    singleton = len(subtags[0]) == 1  # "x-..." / "i-..." private use and grandfathered tags
    for sub in subtags[1:]:
        singleton = singleton or len(sub) == 1
        if not singleton and len(sub) == 2:
            sub = sub.upper()
        elif not singleton and len(sub) == 4 and sub.isalpha():
            sub = sub.title()
        out.append(sub)
    return "-".join(out)


def _qvalue(thousandths: int) -> str:
    return "0" if thousandths == 0 else f"0.{thousandths:03d}".rstrip("0")


def vary_names(vary_lines: Iterable[str]) -> tuple[str, ...]:
    """The lower-cased field names a response's Vary nominates ("*" if any is "*")."""
    names: list[str] = []
    for line in vary_lines:
        for name in line.split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name == "*":
                return ("*",)
            if name not in names:
                names.append(name)
    return tuple(sorted(names))


def normalise_field_value(lines: list[str]) -> str | None:
    """Combine repeated field lines and normalise whitespace (RFC 9111 §4.1)."""
    if not lines:
        return None
    joined = ", ".join(lines).strip()
    joined = _COMMA_RE.sub(",", joined)
    return _WS_RE.sub(" ", joined)


# A secondary-key name that stands for one cookie's value (rules' key.cookies): "cookie:NAME".
# ":" is no token character, so it never collides with a field name a Vary can nominate.
COOKIE_KEY = "cookie:"


def cookie_key(name: str) -> str:
    """The secondary-key name of a cookie (its name keeps its case: RFC 6265 §5.3 compares exactly)."""
    return COOKIE_KEY + name


def request_vary_values(names: tuple[str, ...], request_headers: Headers) -> tuple[str | None, ...]:
    """The normalised values of the nominated request fields (and cookies), in `names` order."""
    return tuple(_vary_value(name, request_headers) for name in names)


def _vary_value(name: str, headers: Headers) -> str | None:
    if name.startswith(COOKIE_KEY):
        return cookie_value(headers.getall("Cookie", []), name[len(COOKIE_KEY) :])
    value = normalise_field_value(headers.getall(name, []))
    if name == "accept-language" and value is not None:
        return normalise_accept_language(value) or value
    return value


def cookie_value(lines: list[str], name: str) -> str | None:
    """The value of cookie `name` in the Cookie field's lines (RFC 6265 §4.2.1), the first if repeated."""
    for line in lines:
        for pair in line.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip(" \t") == name:
                return value.strip(" \t")
    return None


def variant_matches(variant: StoredResponse, request_headers: Headers) -> bool:
    """RFC 9111 §4.1: every nominated field matches; Vary: * never matches."""
    if not variant.vary_names:
        return True
    if variant.vary_names == ("*",):
        return False
    return request_vary_values(variant.vary_names, request_headers) == variant.vary_values


def select_variant(resource: CachedResource, request_headers: Headers) -> StoredResponse | None:
    """The matching variant; if several match, the most recent by Date wins (§4.1)."""
    variants = resource.variants
    if len(variants) == 1:  # the common case: nothing to rank, no Date to parse
        only = variants[0]
        return only if variant_matches(only, request_headers) else None
    best: StoredResponse | None = None
    best_date = float("-inf")
    for variant in resource.variants:
        if not variant_matches(variant, request_headers):
            continue
        date = parse_http_date(variant.date, now=variant.response_time)
        when = date if date is not None else variant.response_time
        if best is None or when >= best_date:
            best, best_date = variant, when
    return best


def with_variant(
    resource: CachedResource | None, key: str, variant: StoredResponse, limit: int
) -> CachedResource:
    """The resource with `variant` added, replacing any variant with the same Vary values.

    At most `limit` variants are kept; the oldest (by response time) go first.
    """
    return with_variants(resource, key, (variant,), limit)


def with_variants(
    resource: CachedResource | None, key: str, added: Sequence[StoredResponse], limit: int
) -> CachedResource:
    """with_variant for several variants of one response (its encodings), added together."""
    kept = [
        v
        for v in (resource.variants if resource is not None else ())
        if not any(v.vary_names == a.vary_names and v.vary_values == a.vary_values for a in added)
    ]
    kept.extend(added)
    if len(kept) > limit:
        kept.sort(key=lambda v: v.response_time)  # stable: the ones added last stay last
        kept = kept[-limit:]
    return CachedResource(key=key, variants=tuple(kept))
