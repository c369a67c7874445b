"""The caching policy of a shared cache, as pure functions of headers, entries and `now`.

Everything that decides whether a response may be stored, how long it stays
fresh, how old it is, whether a stored response may answer a request and how a
304 updates it must live in this file. It follows RFC 9111 section by section
(§3 storing, §4.2 freshness and age, §4.3 validation, §5.2 directives), with
RFC 9213 targeted fields, RFC 5861 stale extensions and RFC 8246 `immutable`.
No I/O, no clock reads: `now`, `request_time` and `response_time` are arguments.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from operator import itemgetter

from multidict import CIMultiDict

from proxy.config import EVERY_UNSAFE_METHOD, InvalidationConfig, PolicyConfig
from proxy.entry import HeaderList, StoredResponse
from proxy.headers import (
    EMPTY_DIRECTIVES,
    Directives,
    Headers,
    any_weak_match,
    bounded_decimal,
    combined_value,
    end_to_end,
    format_http_date,
    parse_cache_control,
    parse_etags,
    parse_http_date,
    parse_targeted_field,
    strong_match,
    weak_match,
)
from proxy.keys import request_vary_values, vary_names
from proxy.networks import address_in
from proxy.ranges import parse_content_range

# RFC 9110 §15.1: status codes that are heuristically cacheable.
HEURISTICALLY_CACHEABLE = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# RFC 9111 §5.2.2.3: the status codes whose caching requirements this cache implements, so
# that must-understand lets it store them despite no-store: the final codes of RFC 9110 §15,
# except 304 (it only updates stored responses).
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 206, 300, 301, 302, 303, 305, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426, 500, 501, 502, 503, 504, 505}
)

# Methods whose responses this cache looks up and stores (RFC 9111 §2, §3).
CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# Fields never stored with a response: recomputed per delivery (Age,
# Content-Length, Content-Range) or meaningless for another client.
_NOT_STORED = frozenset({"age", "content-length", "content-range"})

# Fields that set a cookie for the one client a response answers: Set-Cookie (RFC 6265) and the
# obsolete Set-Cookie2 (RFC 2965, which some origins still send), alike for sharing and storing.
SET_COOKIE_FIELDS = ("set-cookie", "set-cookie2")

# RFC 9111 §3.2: fields a 304 must not change in the stored response (the body
# they describe is the stored one), plus fields that are never stored. Age is
# merged so that §4.2.3 counts it, and then dropped like any received Age.
_NOT_UPDATED_BY_304 = frozenset(
    {"content-length", "content-encoding", "content-range", "content-type", *SET_COOKIE_FIELDS}
)

# RFC 9111 §4.3.2: fields sent with a 304 generated from a stored response
# (RFC 9110 §15.4.5 lists the ones a 200 would have carried).
NOT_MODIFIED_FIELDS = (
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Expires",
    "Vary",
    "Date",
    "Content-Location",
)


# --------------------------------------------------------------------- directives


def request_directives(headers: Headers, opts: PolicyConfig) -> Directives:
    """The request's cache directives (RFC 9111 §5.2.1), or none when the operator ignores them."""
    cache_control = headers.getall("Cache-Control", [])
    return request_directives_of(
        ", ".join(cache_control) if cache_control else None, combined_value(headers, "Pragma"), opts
    )


PRAGMA_NO_CACHE = Directives({"no-cache": None})


def request_directives_of(cache_control: str | None, pragma: str | None, opts: PolicyConfig) -> Directives:
    """request_directives from the combined Cache-Control and Pragma values (None: absent).

    Pragma: no-cache counts only when there is no Cache-Control (RFC 9111 §5.4).
    """
    if not opts.honour_request_directives:
        return EMPTY_DIRECTIVES
    if cache_control is not None:
        return parse_cache_control((cache_control,))
    if pragma is not None and "no-cache" in (p.strip().lower() for p in pragma.split(",")):
        return PRAGMA_NO_CACHE
    return EMPTY_DIRECTIVES


def response_directives(headers: Headers, opts: PolicyConfig) -> tuple[Directives, str | None]:
    """The directives this cache obeys, and the targeted field they came from.

    RFC 9213 §2.2: the first configured targeted field that is present and
    valid replaces Cache-Control (and Expires) for this cache.
    """
    for name in opts.targeted_fields:
        lines = headers.getall(name, [])
        if lines:
            parsed = parse_targeted_field(lines)
            if parsed is not None:
                return parsed, name
    return parse_cache_control(headers.getall("Cache-Control", [])), None


# ----------------------------------------------------------------- freshness, age


@dataclass(frozen=True, slots=True)
class Freshness:
    """A freshness lifetime and the rule of RFC 9111 §4.2.1 it came from."""

    lifetime: float
    source: str  # "invalid" | "s-maxage" | "max-age" | "expires" | "heuristic" | "default" | "none"

    @property
    def explicit(self) -> bool:
        return self.source in ("invalid", "s-maxage", "max-age", "expires")


def freshness_lifetime(
    status: int,
    headers: Headers,
    directives: Directives,
    targeted: bool,
    response_time: float,
    opts: PolicyConfig,
) -> Freshness:
    """RFC 9111 §4.2.1: the first rule that applies, for a shared cache."""
    # Conservative (§4.2.1): an unparsable directive list makes the response stale.
    if directives.invalid:
        return Freshness(0.0, "invalid")
    # Step 1: s-maxage (shared caches only); invalid or duplicated -> stale.
    s_maxage = directives.seconds("s-maxage")
    if s_maxage is not None:
        return Freshness(float(max(s_maxage, 0)), "s-maxage" if s_maxage >= 0 else "invalid")
    # Step 2: max-age.
    max_age = directives.seconds("max-age")
    if max_age is not None:
        return Freshness(float(max(max_age, 0)), "max-age" if max_age >= 0 else "invalid")
    # Step 3: Expires - Date, unless a targeted field replaced Expires (RFC 9213 §2.2).
    expires_lines = headers.getall("Expires", [])
    if expires_lines and not targeted:
        expires = parse_http_date(expires_lines[0], now=response_time) if len(expires_lines) == 1 else None
        if expires is None:
            # §5.3: an invalid Expires (e.g. "0") means already expired.
            return Freshness(0.0, "invalid")
        date = parse_http_date(headers.get("Date"), now=response_time) or response_time
        return Freshness(max(0.0, expires - date), "expires")
    # Step 4: heuristic freshness (§4.2.2) from Last-Modified, bounded.
    if status in HEURISTICALLY_CACHEABLE or "public" in directives:
        last_modified = parse_http_date(headers.get("Last-Modified"), now=response_time)
        if last_modified is not None:
            date = parse_http_date(headers.get("Date"), now=response_time) or response_time
            heuristic = max(0.0, date - last_modified) * opts.heuristic_fraction
            return Freshness(min(heuristic, opts.heuristic_max), "heuristic")
    # Step 5: an operator default for this status.
    if status in opts.default_ttl:
        return Freshness(opts.default_ttl[status], "default")
    return Freshness(0.0, "none")


def age_value(headers: Headers) -> float:
    """The Age field (RFC 9111 §5.1): first valid non-negative integer, else 0."""
    raw = headers.get("Age")
    if raw is None:
        return 0.0
    raw = raw.split(",")[0].strip()
    return float(bounded_decimal(raw, 2**31)) if raw.isascii() and raw.isdigit() else 0.0


def corrected_initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """RFC 9111 §4.2.3: max(apparent_age, corrected_age_value)."""
    date = parse_http_date(headers.get("Date"), now=response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value(headers) + response_delay
    return max(apparent_age, corrected_age_value)


def current_age(entry: StoredResponse, now: float) -> float:
    """RFC 9111 §4.2.3: corrected_initial_age + resident_time."""
    return entry.corrected_initial_age + max(0.0, now - entry.response_time)


def remaining_ttl(entry: StoredResponse, now: float) -> float:
    """Seconds of freshness left (negative once stale)."""
    return entry.freshness_lifetime - current_age(entry, now)


# ------------------------------------------------------------------ storing (§3)


@dataclass(frozen=True, slots=True)
class Overrides:
    """What the operator changes in the storing of one response (proxy/rules.py makes them from rules).

    Pure values: plan_store and freshen take them as they take PolicyConfig.
    """

    # The freshness lifetime, whatever the response says (its Cache-Control, targeted field,
    # Expires or a heuristic); for the statuses of HEURISTICALLY_CACHEABLE unless `ttl_any_status`
    # (the rule named the statuses it is for).
    ttl: float | None = None
    ttl_any_status: bool = False
    # The freshness lifetime when the response gives none explicitly (ahead of a heuristic).
    default_ttl: float | None = None
    default_ttl_any_status: bool = False
    store_private: bool = False  # store a response marked `private` (as if it were not)
    stale_while_revalidate: float | None = None  # the window, whatever the response says
    stale_if_error: float | None = None
    tags: tuple[str, ...] = ()  # purge tags added to the response's own
    strip: frozenset[str] = frozenset()  # lower-case response fields removed before anything else
    # Request fields (and keys.cookie_key names) added to the secondary key, as if Vary named them.
    vary: tuple[str, ...] = ()


NO_OVERRIDES = Overrides()


@dataclass(frozen=True, slots=True)
class StorePlan:
    """The origin response may be stored; `build` adds the body once it has been read."""

    template: StoredResponse
    freshness: Freshness
    # Fields private= / no-cache= name (lower-case), left out of what is stored: the client
    # whose request fetched the response still gets them (RFC 9111 §5.2.2.4, §5.2.2.7).
    withheld: tuple[str, ...] = ()

    def build(self, body: bytes, fetch_epoch: int = 0) -> StoredResponse:
        return self.template.evolve(body=body, fetch_epoch=fetch_epoch)


@dataclass(frozen=True, slots=True)
class DontStore:
    """The origin response must not be stored, and why (for Cache-Status detail and logs)."""

    reason: str


def plan_store(
    method: str,
    request_headers: Headers,
    req_directives: Directives,
    status: int,
    reason: str,
    response_headers: Headers,
    request_time: float,
    response_time: float,
    opts: PolicyConfig,
    overrides: Overrides = NO_OVERRIDES,
) -> StorePlan | DontStore:
    """RFC 9111 §3: may this response be stored, and as what (with the operator's `overrides`)."""
    o = overrides
    if o.strip:
        kept = ((n, v) for n, v in response_headers.items() if n.lower() not in o.strip)
        response_headers = CIMultiDict(kept)
    # §3: only responses to a method this cache understands as cacheable; a
    # HEAD response never creates an entry (it may only freshen one, §4.3.5).
    if method != "GET":
        return DontStore("method")
    # §3: a final response, and not a 304 (it only updates stored responses, §4.3.4).
    if status < 200 or status == 304:
        return DontStore(f"status {status}")
    # §3.3: a 206 only with its bookkeeping: one byte range of a representation of known length.
    part = parse_content_range(response_headers.get("Content-Range")) if status == 206 else None
    if status == 206 and part is None:
        return DontStore("206 without a single byte range of known length")
    # §5.2.1.5: request no-store.
    if "no-store" in req_directives:
        return DontStore("request no-store")
    directives, targeted_field = response_directives(response_headers, opts)
    # §5.2.2.3: must-understand limits storing to a status this cache understands, and
    # then it overrides no-store (which accompanies it for caches that do not know it).
    must_understand = "must-understand" in directives
    if must_understand and status not in UNDERSTOOD_STATUSES:
        return DontStore("must-understand")
    # §5.2.2.5: response no-store.
    if "no-store" in directives and not must_understand:
        return DontStore("no-store")
    # §5.2.2.7: a shared cache never stores an unqualified private response.
    if "private" in directives and not directives.field_names("private") and not o.store_private:
        return DontStore("private")
    # §3.5: a request with Authorization only if the response explicitly allows it.
    if "authorization" in request_headers and not (
        "public" in directives or "s-maxage" in directives or "must-revalidate" in directives
    ):
        return DontStore("authorization")
    # Set-Cookie: never shared with another user; stored (without it) only if configured.
    if not opts.store_set_cookie and any(name in response_headers for name in SET_COOKIE_FIELDS):
        return DontStore("set-cookie")
    names = vary_names(response_headers.getall("Vary", []))
    if names == ("*",):
        return DontStore("vary *")  # §4.1: would never match a later request
    if o.vary:
        names = tuple(sorted({*names, *o.vary}))
    freshness = freshness_lifetime(
        status, response_headers, directives, targeted_field is not None, response_time, opts
    )
    if o.ttl is not None and (o.ttl_any_status or status in HEURISTICALLY_CACHEABLE):
        freshness = Freshness(o.ttl, "rule")
    elif (
        o.default_ttl is not None
        and not freshness.explicit
        and (o.default_ttl_any_status or status in HEURISTICALLY_CACHEABLE)
    ):
        freshness = Freshness(o.default_ttl, "rule")
    has_validator = "etag" in response_headers or "last-modified" in response_headers
    if not (
        freshness.explicit
        or freshness.source in ("heuristic", "default", "rule")
        or "public" in directives
        or (status in HEURISTICALLY_CACHEABLE and has_validator)
    ):
        return DontStore("no freshness information")
    if freshness.lifetime <= 0 and not has_validator:
        return DontStore("already stale and no validator")

    # §3.1: drop hop-by-hop fields, fields named by private= / no-cache=,
    # cookies, and fields recomputed per delivery.
    drop = _not_stored(opts.strip_tag_fields, opts.tag_fields, opts.strip_targeted_fields)
    named = directives.field_names("private") + directives.field_names("no-cache")
    withheld: tuple[str, ...] = ()
    if named:
        withheld = tuple(sorted({n.lower() for n in named} - {*drop, *o.strip}))  # else nobody gets them
        drop = (*drop, *named)
    stored = end_to_end(response_headers, drop)
    if parse_http_date(stored.get("Date"), now=response_time) is None:
        # RFC 9110 §6.6.1: a recipient with a clock adds Date, and may replace an invalid one
        # with the receipt time (what freshness and age above already counted from).
        stored["Date"] = format_http_date(response_time)

    template = StoredResponse(
        status=status,
        reason=reason,
        headers=tuple(stored.items()),
        body=b"",
        request_time=request_time,
        response_time=response_time,
        corrected_initial_age=corrected_initial_age(response_headers, request_time, response_time),
        freshness_lifetime=freshness.lifetime,
        vary_names=names,
        vary_values=request_vary_values(names, request_headers),
        no_cache="no-cache" in directives and not directives.field_names("no-cache"),
        must_revalidate=(
            "must-revalidate" in directives or "proxy-revalidate" in directives or "s-maxage" in directives
        ),
        immutable="immutable" in directives,
        stale_while_revalidate=_window(
            directives, "stale-while-revalidate", opts.default_stale_while_revalidate
        )
        if o.stale_while_revalidate is None
        else o.stale_while_revalidate,
        stale_if_error=_window(directives, "stale-if-error", opts.default_stale_if_error)
        if o.stale_if_error is None
        else o.stale_if_error,
        etag=stored.get("ETag"),
        last_modified=stored.get("Last-Modified"),
        date=stored.get("Date"),
        tags=_tags(response_headers, opts.tag_fields, o.tags),
        parts=() if part is None else ((part[0], part[1]),),
        complete_length=-1 if part is None else part[2],
    )
    return StorePlan(template, freshness, withheld)


@functools.lru_cache(maxsize=16)
def _not_stored(
    strip_tag_fields: bool, tag_fields: tuple[str, ...], strip_targeted_fields: tuple[str, ...]
) -> tuple[str, ...]:
    """The fields never stored whatever the response says (plan_store adds those its directives name).

    Set-Cookie and the fields recomputed per delivery; tags, kept in `tags` for purge, which
    by default clients never see (requirements §6); and fields aimed at this cache alone
    (RFC 9213 §1: CDN-Cache-Control goes on downstream). Sorted: one tuple per configuration,
    which end_to_end's own memo then finds.
    """
    drop = {*_NOT_STORED, *SET_COOKIE_FIELDS, *(n.lower() for n in strip_targeted_fields)}
    if strip_tag_fields:
        drop.update(n.lower() for n in tag_fields)
    return tuple(sorted(drop))


def _window(directives: Directives, name: str, default: float) -> float:
    seconds = directives.seconds(name)
    if seconds is None or seconds < 0:
        return default
    return float(seconds)


def _tags(headers: Headers, fields: tuple[str, ...], added: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Surrogate keys (space separated) and cache tags (comma separated), then `added`, deduplicated."""
    tags: list[str] = []
    for name in fields:
        for line in headers.getall(name, []):
            for tag in line.replace(",", " ").split():
                if tag not in tags and (tag.isascii() or _utf8(tag)):
                    tags.append(tag)
    for tag in added:
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _utf8(tag: str) -> bool:
    """Whether a tag is UTF-8 text. One with bytes that are not (Latin-1 from the origin, held as
    surrogates) is left out: the catalogue cannot write it (SQLite text is UTF-8; the failed batch
    took its neighbours' entries with it), and no purge can name it (proxy/purge.py refuses one)."""
    try:
        tag.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------- reuse (§4, §5.2.1)

# The decisions are values: never changed once made. They are not frozen dataclasses only
# because one is made per request, and a frozen dataclass costs several times more to build.


@dataclass(slots=True)
class Deliver:
    """Serve the stored response (fresh, or stale where allowed)."""

    entry: StoredResponse
    age: float
    ttl: float
    stale: bool = False
    # RFC 5861 §3: serve now and revalidate in the background.
    revalidate_in_background: bool = False


@dataclass(slots=True)
class Revalidate:
    """Ask the origin whether the stored response is still good (§4.3.1)."""

    entry: StoredResponse
    reason: str  # "stale" | "no-cache" | "request"


@dataclass(slots=True)
class Fetch:
    """Nothing usable is stored: fetch from the origin and maybe store (§4)."""

    reason: str  # "uri-miss" | "vary-miss" | "partial" (stored parts lack what is asked, §3.3)


@dataclass(slots=True)
class Pass:
    """Forward without lookup or storage (a method this cache does not store)."""

    reason: str


@dataclass(slots=True)
class GatewayTimeout:
    """only-if-cached and nothing suitable is stored (§5.2.1.7): answer 504."""

    reason: str = "only-if-cached"


Decision = Deliver | Revalidate | Fetch | Pass | GatewayTimeout


def decide(
    method: str,
    req_directives: Directives,
    entry: StoredResponse | None,
    any_stored: bool,
    now: float,
    opts: PolicyConfig,
    covered: bool = True,
) -> Decision:
    """RFC 9111 §4: may a stored response answer this request?

    `entry` is the variant selected for the request (None if none matched);
    `any_stored` says whether the URL had stored variants at all (vary-miss).
    `covered` is False when `entry` is incomplete (a stored 206) and the request
    is not for a range it holds (ranges.wanted_range and StoredResponse.holds).
    """
    if method not in CACHEABLE_METHODS:
        return Pass("method")
    asked = bool(req_directives.values)  # most requests carry no directive: skip their checks
    only_if_cached = asked and "only-if-cached" in req_directives
    if entry is None:
        if only_if_cached:
            return GatewayTimeout()
        return Fetch("vary-miss" if any_stored else "uri-miss")
    if not covered:
        # §3.3: an incomplete response answers only a request for a range wholly within it.
        return GatewayTimeout() if only_if_cached else Fetch("partial")

    age = current_age(entry, now)
    ttl = entry.freshness_lifetime - age
    fresh = ttl > 0

    # RFC 8246: a fresh immutable response needs no revalidation, even on reload.
    if fresh and entry.immutable and opts.honour_immutable and not entry.no_cache:
        return Deliver(entry, age, ttl)

    if asked:
        # §5.2.1.4 request no-cache; §5.2.1.1 max-age; §5.2.1.3 min-fresh.
        if "no-cache" in req_directives:
            return _revalidate_or_504(entry, "request", only_if_cached)
        max_age = req_directives.seconds("max-age")
        if max_age is not None and (max_age < 0 or age > max_age):
            return _revalidate_or_504(entry, "request", only_if_cached)
        min_fresh = req_directives.seconds("min-fresh")
        if min_fresh is not None and (min_fresh < 0 or ttl < min_fresh):
            return _revalidate_or_504(entry, "request", only_if_cached)

    # §5.2.2.4: a no-cache response is always revalidated.
    if entry.no_cache:
        return _revalidate_or_504(entry, "no-cache", only_if_cached)
    if fresh:
        return Deliver(entry, age, ttl)

    # Stale. §5.2.1.2 max-stale lets the client accept it, unless §4.2.4 forbids.
    if asked and "max-stale" in req_directives and may_serve_stale(entry, opts):
        max_stale = req_directives.get("max-stale")
        limit = float("inf") if max_stale is None else req_directives.seconds("max-stale")
        if limit is not None and limit >= 0 and -ttl <= limit:
            return Deliver(entry, age, ttl, stale=True)
    # RFC 5861 §3: inside stale-while-revalidate, answer now and refresh behind —
    # unless the client bounded the staleness it accepts (§5.2.1.2 max-stale=N).
    client_limit = req_directives.seconds("max-stale") if asked and req_directives.get("max-stale") else None
    if within_stale_while_revalidate(entry, now, opts) and (
        client_limit is None or 0 <= -ttl <= client_limit
    ):
        return Deliver(entry, age, ttl, stale=True, revalidate_in_background=True)
    return _revalidate_or_504(entry, "stale", only_if_cached)


def _revalidate_or_504(entry: StoredResponse, reason: str, only_if_cached: bool) -> Decision:
    if only_if_cached:
        return GatewayTimeout()
    return Revalidate(entry, reason)


def may_serve_stale(entry: StoredResponse, opts: PolicyConfig) -> bool:
    """RFC 9111 §4.2.4: never stale when no-cache, must-revalidate, proxy-revalidate or s-maxage."""
    if opts.serve_stale_despite_prohibitions:
        return True
    return not (entry.no_cache or entry.must_revalidate)


# --------------------------------------------------------------- validation (§4.3)


def conditional_headers(entry: StoredResponse, variants: tuple[StoredResponse, ...]) -> CIMultiDict[str]:
    """RFC 9111 §4.3.1: validators for a conditional request to the origin.

    If-None-Match carries the entity-tags of every stored variant of the URL,
    so that a 304 can select any of them; If-Modified-Since the selected
    entry's Last-Modified (or Date when it has none).
    """
    out: CIMultiDict[str] = CIMultiDict()
    etags: list[str] = []
    for variant in (entry, *variants):
        if variant.etag and variant.etag not in etags:
            etags.append(variant.etag)
    if etags:
        out["If-None-Match"] = ", ".join(etags)
    since = entry.last_modified or (entry.date if not etags else None)
    if since:
        out["If-Modified-Since"] = since
    return out


def select_for_update(
    not_modified_headers: Headers,
    revalidated: StoredResponse,
    variants: tuple[StoredResponse, ...],
    sent: Headers,
) -> list[StoredResponse]:
    """RFC 9111 §4.3.4: which stored responses a 304 freshens.

    `revalidated` is the response the conditional request was made for, `sent`
    the validators it carried (conditional_headers). A 304 without a validator
    (many origins omit it) stands for the one validator the request carried:
    the 304 says that validator matched (RFC 9110 §15.4.5). When the request
    carried several entity-tags it is ambiguous, and selects nothing.
    """
    etag = not_modified_headers.get("ETag")
    last_modified = not_modified_headers.get("Last-Modified")
    if etag is None and last_modified is None:
        # If-None-Match is evaluated first, If-Modified-Since only without it (RFC 9110 §13.2.2).
        if "if-none-match" in sent:
            tags = parse_etags(sent.get("If-None-Match")) or ()
            if len(tags) != 1:
                return []
            etag = tags[0]
        else:
            since = sent.get("If-Modified-Since")
            if since is None:
                return []
            if since != revalidated.last_modified:
                # The revalidated response's Date stood in for a validator it lacks (§4.3.1).
                lacks = revalidated.etag is None and revalidated.last_modified is None
                return [revalidated] if lacks and since == revalidated.date else []
            last_modified = since
    if etag is not None:
        etag = etag.strip()
        if not etag.startswith("W/"):
            # A strong validator selects every stored response with it.
            return [v for v in variants if v.etag is not None and strong_match(v.etag, etag)]
        # A weak validator selects the most recent matching stored response.
        matching = [v for v in variants if v.etag is not None and weak_match(v.etag, etag)]
        return [max(matching, key=lambda v: v.response_time)] if matching else []
    # Last-Modified is a weak validator (RFC 9110 §8.8.2.2): the most recent match only.
    dated = [v for v in variants if v.last_modified == last_modified]
    return [max(dated, key=lambda v: v.response_time)] if dated else []


def freshen(
    entry: StoredResponse,
    not_modified_headers: Headers,
    request_headers: Headers,
    request_time: float,
    response_time: float,
    opts: PolicyConfig,
    overrides: Overrides = NO_OVERRIDES,
    fetch_epoch: int = 0,
) -> StorePlan | DontStore:
    """RFC 9111 §3.2, §4.3.4: the stored response updated by a 304's header fields.

    `fetch_epoch` is the purge epoch of the revalidating request (StoredResponse.fetch_epoch):
    set here, the freshened response is copied once, not twice.
    """
    merged: CIMultiDict[str] = CIMultiDict(entry.headers)
    update = end_to_end(not_modified_headers, _NOT_UPDATED_BY_304)
    if "date" not in update:
        # RFC 9110 §6.6.1: a 304 without Date is dated on receipt; keeping the old Date
        # would give the freshened response its old apparent age (§4.2.3).
        update["Date"] = format_http_date(response_time)
    for name in set(update.keys()):
        merged.popall(name, None)
    merged.extend(update)
    if entry.parts:
        # An incomplete response keeps its parts (§3.3); plan_store files a 206 by its range.
        first, last = entry.parts[0]
        merged["Content-Range"] = f"bytes {first}-{last}/{entry.complete_length}"
    # Keep the variant's own Vary values: the 304 may answer another variant's request.
    plan = plan_store(
        "GET",
        request_headers,
        EMPTY_DIRECTIVES,
        entry.status,
        entry.reason,
        merged,
        request_time,
        response_time,
        opts,
        overrides,
    )
    if isinstance(plan, DontStore):
        return plan
    template = plan.template.evolve(
        body=entry.body,
        vary_names=entry.vary_names,
        vary_values=entry.vary_values,
        tags=plan.template.tags or entry.tags,
        parts=entry.parts,
        complete_length=entry.complete_length,
        fetch_epoch=fetch_epoch,
    )
    return StorePlan(template, plan.freshness)


def head_may_update(entry: StoredResponse, head_headers: Headers) -> bool:
    """RFC 9111 §4.3.5: may a 200 answer to HEAD update this stored GET response (else it goes stale)?

    Only when it describes the same representation: each validator it carries
    (ETag, Last-Modified) equals the stored one, at least one does (without any,
    nothing says it is the same), and its Content-Length, if any, is the stored
    representation's length.
    """
    etag = head_headers.get("ETag")
    last_modified = head_headers.get("Last-Modified")
    if etag is None and last_modified is None:
        return False
    if etag is not None and (entry.etag is None or etag.strip() != entry.etag.strip()):
        return False
    if last_modified is not None:
        when = entry.response_time
        received = parse_http_date(last_modified, now=when)
        if received is None or received != parse_http_date(entry.last_modified, now=when):
            return False
    length = head_headers.get("Content-Length")
    if length is not None:
        length = length.strip()
        if not (length.isascii() and length.isdigit()) or int(length) != entry.length:
            return False
    return True


def freshened_for_disk(old: StoredResponse, new: StoredResponse) -> bool:
    """Does a response freshened by a 304 (RFC 9111 §4.3.4) give a lasting copy anything new?

    The memory tier always takes the freshened response. A copy kept for later
    (on disk: after a restart or an eviction from memory) gains something only
    if the stored header fields changed, Date aside, or if the freshened
    response can be used for a while without the origin: a freshness lifetime,
    or a stale-while-revalidate or stale-if-error window (RFC 5861). Otherwise
    the old copy, stale as well, is revalidated the same way.
    """
    if new.freshness_lifetime > 0 or new.stale_while_revalidate > 0 or new.stale_if_error > 0:
        return True
    if new.status != old.status or new.tags != old.tags:  # tags come from fields not stored
        return True
    return _fields_but_date(new.headers) != _fields_but_date(old.headers)


def _fields_but_date(headers: HeaderList) -> list[tuple[str, str]]:
    """The fields without Date, by name (a 304's fields are moved to the end; values of one name keep
    their order)."""
    fields = [(lowered, value) for name, value in headers if (lowered := name.lower()) != "date"]
    return sorted(fields, key=_FIELD_NAME)  # stable: values of one name keep their order


_FIELD_NAME = itemgetter(0)  # a C key function: a lambda cost a Python call per field


def client_not_modified(request_headers: Headers, entry: StoredResponse) -> bool:
    """RFC 9111 §4.3.2 / RFC 9110 §13.2.2: does the client's conditional GET/HEAD get a 304?

    If-None-Match (weak comparison, "*" matches any) takes precedence; otherwise
    If-Modified-Since against Last-Modified (or Date). A stored 206 answers for the
    representation its parts belong to (RFC 9110 §13.2.2: before Range).
    """
    if entry.status not in (200, 206):
        return False
    lines = request_headers.getall("If-None-Match", None)
    if lines is not None:
        # A list field's lines are one list (RFC 9110 §5.3): a tag on a second line counts too.
        tags = parse_etags(lines[0] if len(lines) == 1 else ", ".join(lines))
        if tags is None:
            return False
        if tags == ("*",):
            return True
        return entry.etag is not None and any_weak_match(tags, entry.etag)
    # The receipt time stands in for now when placing a two-digit RFC 850 year.
    when = entry.response_time
    ims = parse_http_date(combined_value(request_headers, "If-Modified-Since"), now=when)
    if ims is None:
        return False
    modified = parse_http_date(entry.last_modified, now=when) or parse_http_date(entry.date, now=when)
    return modified is not None and modified <= ims


_NOT_MODIFIED_NAMES = frozenset(n.lower() for n in NOT_MODIFIED_FIELDS)


def not_modified_header_list(entry: StoredResponse) -> HeaderList:
    """The stored fields a generated 304 carries (RFC 9110 §15.4.5)."""
    return tuple((n, v) for n, v in entry.headers if n.lower() in _NOT_MODIFIED_NAMES)


def has_precondition_for_origin(request_headers: Headers) -> bool:
    """If-Match / If-Unmodified-Since: left to the origin (RFC 9110 §13.2.1)."""
    return "if-match" in request_headers or "if-unmodified-since" in request_headers


# ------------------------------------------------- serving stale (§4.2.4, RFC 5861)

# RFC 5861 §4: the origin answers that stale-if-error may hide.
ERROR_STATUSES = frozenset({500, 502, 503, 504})


def invalidates(method: str, remote: str | None, rule: InvalidationConfig) -> bool:
    """§4.4: does a non-error response to this request invalidate its target URI (and Locations)?

    The RFC's answer is "when the method is unsafe"; `policy.invalidate_on_unsafe`
    narrows it to some methods, from some client networks (by default: every
    unsafe method, from everywhere). The caller still forwards the request.
    """
    if method in SAFE_METHODS:
        return False
    if method not in rule.methods and EVERY_UNSAFE_METHOD not in rule.methods:
        return False
    return address_in(remote, rule.networks)


def within_stale_while_revalidate(entry: StoredResponse, now: float, opts: PolicyConfig) -> bool:
    """RFC 5861 §3: stale, but by no more than the stale-while-revalidate window."""
    staleness = current_age(entry, now) - entry.freshness_lifetime
    # No window, no stale: age == lifetime is already stale (§4.2), and §4.2.4 forbids
    # serving it without permission.
    window = entry.stale_while_revalidate
    return window > 0 and 0 <= staleness <= window and may_serve_stale(entry, opts)


def within_stale_if_error(
    entry: StoredResponse, req_directives: Directives, now: float, opts: PolicyConfig
) -> bool:
    """RFC 5861 §4: may this stale entry replace an error? (response or request directive)."""
    if not may_serve_stale(entry, opts):
        return False
    window = entry.stale_if_error
    requested = req_directives.seconds("stale-if-error")
    if requested is not None and requested >= 0:
        window = max(window, float(requested))
    staleness = current_age(entry, now) - entry.freshness_lifetime
    return staleness < 0 or (window > 0 and staleness <= window)


# Cache-Status detail of a stored response served instead of an origin failure.
STALE_IF_ERROR = "stale-if-error"
STALE_ON_DISCONNECT = "stale-on-disconnect"


def stale_for_failure(
    entry: StoredResponse, req_directives: Directives, now: float, opts: PolicyConfig, *, disconnected: bool
) -> str | None:
    """May `entry` answer instead of an origin failure, and under which rule (None: it may not).

    RFC 5861 §4: within a stale-if-error window (the response's, the request's or the
    operator's default), for an origin error status or no usable response at all.
    RFC 9111 §4.2.4: a cache that cannot reach the origin (`disconnected`: unreachable,
    connection closed or broken, timed out, unparsable response) may serve stale; here
    within `opts.stale_on_disconnect` seconds, and never against a client's max-stale=N
    below the staleness (§5.2.1.2), nor when a directive forbids stale (may_serve_stale).
    """
    if within_stale_if_error(entry, req_directives, now, opts):
        return STALE_IF_ERROR
    if not disconnected or not may_serve_stale(entry, opts):
        return None
    staleness = current_age(entry, now) - entry.freshness_lifetime
    if req_directives.get("max-stale") is not None:
        bound = req_directives.seconds("max-stale")
        if bound is None or staleness > bound:
            return None
    window = opts.stale_on_disconnect
    return STALE_ON_DISCONNECT if window > 0 and staleness <= window else None


def refresh_ahead_due(entry: StoredResponse, ttl: float, fraction: float) -> bool:
    """Refresh-ahead: a fresh entry in the last `fraction` of its lifetime (0 disables)."""
    return fraction > 0 and 0 < ttl <= entry.freshness_lifetime * fraction


# ------------------------------------------------- errors shared by coalesced requests


def shareable_error(status: int, headers: Headers, opts: PolicyConfig) -> bool:
    """May an origin error (5xx) be handed to every request waiting on the same fetch?

    Waiters asked for the same URL at the same moment; a 5xx that is not private
    and sets no cookie is what each of them would have got, and sharing it keeps
    a failing origin from a thundering herd. It is never stored.
    """
    if status < 500:
        return False
    directives, _ = response_directives(headers, opts)
    return "private" not in directives and not any(name in headers for name in SET_COOKIE_FIELDS)


def transient_snapshot(
    status: int,
    reason: str,
    headers: Headers,
    body: bytes,
    request_time: float,
    response_time: float,
    drop: tuple[str, ...] = (),
) -> StoredResponse:
    """An origin answer kept only to answer coalesced requests: never stored, never fresh."""
    kept = end_to_end(headers, {*_NOT_STORED, *SET_COOKIE_FIELDS, *(d.lower() for d in drop)})
    if "date" not in kept:
        kept["Date"] = format_http_date(response_time)
    return StoredResponse(
        status=status,
        reason=reason,
        headers=tuple(kept.items()),
        body=body,
        request_time=request_time,
        response_time=response_time,
        corrected_initial_age=corrected_initial_age(headers, request_time, response_time),
        freshness_lifetime=0.0,
        no_cache=True,
        must_revalidate=True,
        date=kept.get("Date"),
    )


# ------------------------------------------------------------------------ purge


def soft_purged(entry: StoredResponse, at: float) -> StoredResponse:
    """A soft purge at time `at`: stale from then on, so stale-while-revalidate and
    stale-if-error can still answer while it is fetched again (their windows count
    from the purge)."""
    age_then = current_age(entry, at)
    if entry.freshness_lifetime <= age_then and not entry.immutable:
        return entry
    return entry.evolve(freshness_lifetime=min(entry.freshness_lifetime, age_then), immutable=False)
