"""Pure parsing of the HTTP fields that caching depends on.

Everything that turns header text into values lives here: Cache-Control
directives (RFC 9111 §5.2), targeted cache-control fields as Structured Fields
(RFC 9213 via http_sfv), HTTP-dates (RFC 9110 §5.6.7), entity-tags and their
comparison (RFC 9110 §8.8.3, §13.1.2), hop-by-hop fields (RFC 9110 §7.6.1).
No I/O, no clock, no aiohttp server objects.
"""

from __future__ import annotations

import calendar
import email.utils
import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from http_sfv.dictionary import Dictionary as SFDictionary
from http_sfv.item import Item as SFItem
from http_sfv.types import Token
from multidict import CIMultiDict, CIMultiDictProxy

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

# RFC 9110 §7.6.1 and RFC 9112: connection-specific fields, never stored nor forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# RFC 9110 §7.2: Host = uri-host [ ":" port ]; RFC 9112 §3.2: any other value is a 400.
VALID_HOST = re.compile(r"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?")

# Significant digits past which a decimal field value is not converted: int() of a string of
# thousands of digits raises past 4300 (a 500) and costs quadratic time before. 18 digits hold any
# length, position or number of seconds a cache works with.
MAX_DECIMAL_DIGITS = 18


def bounded_decimal(digits: str, cap: int) -> int:
    """The value of 1*DIGIT `digits` (ASCII digits, checked by the caller), at most `cap` (< 10**18)."""
    significant = digits.lstrip("0")
    if len(significant) > MAX_DECIMAL_DIGITS:
        return cap
    return min(int(significant or "0"), cap)


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_DIRECTIVE_RE = re.compile(
    rf"\s*({_TOKEN})\s*(?:=\s*(?:({_TOKEN})|\"((?:[^\"\\]|\\.)*)\"))?\s*(?:,|$)",
)
_ETAG_RE = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class Directives:
    """Parsed cache directives: name (lower-case) -> argument (None if none).

    `duplicates` names directives that appeared more than once; `invalid` is
    set when the field could not be parsed completely (RFC 9111 §4.2.1 says to
    be conservative: such a response is treated as stale by the policy).
    """

    values: Mapping[str, str | None] = field(default_factory=dict)
    duplicates: frozenset[str] = frozenset()
    invalid: bool = False

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def seconds(self, name: str) -> int | None:
        """A delta-seconds argument (RFC 9111 §1.2.2); None if absent, -1 if invalid or duplicated."""
        if name not in self.values:
            return None
        if name in self.duplicates:
            return -1
        arg = self.values[name]
        # 1*DIGIT is ASCII only: str.isdigit() also accepts '²' or '٣'.
        if arg is None or not (arg.isascii() and arg.isdigit()):
            return -1
        # §1.2.2: an overflowing delta-seconds is taken as 2^31.
        return bounded_decimal(arg, 2**31)

    def field_names(self, name: str) -> tuple[str, ...]:
        """Field names listed in a qualified directive such as private="a, b" (§5.2.2.7)."""
        arg = self.values.get(name)
        if not arg:
            return ()
        return tuple(n.strip().lower() for n in arg.split(",") if n.strip())


EMPTY_DIRECTIVES = Directives()


def parse_cache_control(field_values: Iterable[str]) -> Directives:
    """Parse every Cache-Control field line into Directives (RFC 9111 §5.2).

    The result is shared between equal inputs: treat it as read-only.
    """
    lines = tuple(field_values)
    if sum(map(len, lines)) <= _MEMO_MAX_CHARS:
        return _parse_cache_control_memo(lines)
    return _parse_cache_control(lines)


# Origins repeat a handful of Cache-Control values; short ones are parsed once.
_MEMO_MAX_CHARS = 256


@functools.lru_cache(maxsize=1024)
def _parse_cache_control_memo(lines: tuple[str, ...]) -> Directives:
    return _parse_cache_control(lines)


def _parse_cache_control(field_values: tuple[str, ...]) -> Directives:
    values: dict[str, str | None] = {}
    duplicates: set[str] = set()
    invalid = False
    for line in field_values:
        pos = 0
        text = line.strip()
        while pos < len(text):
            if text[pos] in ", \t":
                pos += 1
                continue
            m = _DIRECTIVE_RE.match(text, pos)
            if not m:
                invalid = True
                break
            name = m.group(1).lower()
            arg = m.group(2) if m.group(2) is not None else m.group(3)
            if arg is not None and m.group(3) is not None:
                arg = re.sub(r"\\(.)", r"\1", arg)
            if name in values:
                duplicates.add(name)
                if name in _FLAG_OR_FIELD_NAMES:
                    # RFC 9111 §5.2.2.4, §5.2.2.7: each occurrence applies. An unqualified one
                    # covers the whole response; qualified ones add up their field names.
                    first = values[name]
                    values[name] = None if first is None or arg is None else f"{first}, {arg}"
            else:
                values[name] = arg
            pos = m.end()
    return Directives(values, frozenset(duplicates), invalid)


# RFC 9213 §2.1: the Structured Fields type each known directive's value must have.
# delta-seconds (RFC 9111 §1.2.2, RFC 5861) are non-negative Integers; flags are Boolean;
# no-cache and private are Boolean or a String listing field names. Others take anything.
_SECONDS = frozenset({"max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"})
_FLAGS = frozenset(
    {
        "no-store",
        "no-transform",
        "must-revalidate",
        "proxy-revalidate",
        "must-understand",
        "public",
        "immutable",
    }
)
_FLAG_OR_FIELD_NAMES = frozenset({"no-cache", "private"})


def parse_targeted_field(field_values: Iterable[str]) -> Directives | None:
    """Parse a targeted cache-control field (RFC 9213 §2.1) as an SF Dictionary.

    Returns None when the field is invalid as a whole, so that the next targeted
    field (or Cache-Control) applies: it does not parse as a Dictionary, or a
    known directive has a value of the wrong type (max-age="60", max-age=1.5,
    max-age=-1, max-age=(1 2), no-store=1, ...), which §2.1 says not to consume.
    Booleans become valueless directives (?0: absent); integers and strings
    become their text; parameters are ignored.
    """
    joined = ", ".join(field_values)
    if not joined.strip():
        return None
    parsed = SFDictionary()
    try:
        parsed.parse(joined.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    values: dict[str, str | None] = {}
    for name, member in parsed.items():
        # An Inner List has no single value; Items carry a bare value (bool is also an int).
        value = getattr(member, "value", None) if isinstance(member, SFItem) else member
        if not _expected_type(name, value):
            return None
        if value is True:
            values[name] = None
        elif value is False:
            continue  # "private=?0" means the directive is absent
        elif isinstance(value, int | str):
            values[name] = str(value)
        # Any other type for an extension directive: ignored, the field still counts.
    return Directives(values)


def _expected_type(name: str, value: object) -> bool:
    """RFC 9213 §2.1: does a directive's value have the type its definition implies?"""
    if isinstance(value, bool):
        return name not in _SECONDS
    if name in _SECONDS:
        return isinstance(value, int) and value >= 0
    if name in _FLAGS:
        return False
    if name in _FLAG_OR_FIELD_NAMES:
        return isinstance(value, str) and not isinstance(value, Token)
    return True


# RFC 9110 §5.6.7: the three formats of an HTTP-date. Names, "GMT" and digits are
# case-sensitive and exact (%s"..." and DIGIT in the ABNF); one SP between parts.
_DAY_NAME = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_NAME_L = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, 1)}
_MONTH = "(" + "|".join(_MONTHS) + ")"
_TIME_OF_DAY = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
# IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
_IMF_FIXDATE = re.compile(rf"{_DAY_NAME}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME_OF_DAY} GMT")
# rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT
_RFC850_DATE = re.compile(rf"{_DAY_NAME_L}, ([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME_OF_DAY} GMT")
# asctime-date: Sun Nov  6 08:49:37 1994 (day: 2DIGIT or SP DIGIT)
_ASCTIME_DATE = re.compile(rf"{_DAY_NAME} {_MONTH} ([0-9]{{2}}| [0-9]) {_TIME_OF_DAY} ([0-9]{{4}})")


def parse_http_date(value: str | None, *, now: float) -> float | None:
    """An HTTP-date as epoch seconds; None unless it is one of the three formats of RFC 9110 §5.6.7.

    IMF-fixdate, the obsolete RFC 850 form and asctime are accepted (recipients
    MUST accept all three); anything else (another zone, a two-digit year in
    IMF-fixdate, a missing comma, extra spaces, a one-digit hour, ...) is not a
    date. `now` places the two-digit year of an RFC 850 date: the year with
    those digits at most 50 years ahead of it (§5.6.7). The receipt time will do.
    """
    if not value:
        return None
    known = _PARSED_DATES.get(value)
    if known is not None:
        return known
    text = value.strip(" \t")
    if m := _IMF_FIXDATE.fullmatch(text):
        day, month, year, hour, minute, second = m.groups()
    elif m := _ASCTIME_DATE.fullmatch(text):
        month, day, hour, minute, second, year = m.groups()
    elif m := _RFC850_DATE.fullmatch(text):
        day, month, yy, hour, minute, second = m.groups()
        # The year with these last two digits that is at most 50 years ahead of `now`.
        this_year = datetime.fromtimestamp(now, UTC).year
        full = this_year - this_year % 100 + int(yy)
        if full > this_year + 50:
            full -= 100
        elif full <= this_year - 50:
            full += 100
        year = str(full)
    else:
        return None
    parsed = _timestamp(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second))
    # Not an RFC 850 date (its year depends on `now`), nor one padded with whitespace past any
    # real field's length (the key is the value as received: memory stays small).
    if parsed is not None and m.re is not _RFC850_DATE and len(value) <= PARSED_DATES_LONGEST:
        if len(_PARSED_DATES) >= PARSED_DATES_LIMIT:
            _PARSED_DATES.clear()
        _PARSED_DATES[value] = parsed
    return parsed


# Dates parsed lately, as received: a response's Date changes once a second and its Expires and
# Last-Modified not at all, while parsing one costs a regex and a calendar check (twice per
# revalidation). Bounded; cleared when full.
PARSED_DATES_LIMIT = 4096
PARSED_DATES_LONGEST = 64
_PARSED_DATES: dict[str, float] = {}


def _timestamp(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float | None:
    # §5.6.7: a real calendar day; 00:00:00 to 23:59:60 (a leap second).
    if year < 1 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate for an epoch timestamp (RFC 9110 §5.6.7).

    The last second's text is remembered: a 304 without Date (dated on receipt) and the
    responses stored in one second share it, and email.utils takes a few microseconds.
    """
    global _last_formatted
    second = math.floor(timestamp)
    last = _last_formatted  # one tuple, replaced whole: threads never see half of one
    if last[0] == second:
        return last[1]
    text = email.utils.formatdate(second, usegmt=True)
    _last_formatted = (second, text)
    return text


_last_formatted: tuple[int | None, str] = (None, "")  # the second, its IMF-fixdate


def combined_value(headers: Headers, name: str) -> str | None:
    """All field lines of one name joined with ", " (RFC 9110 §5.3); None if absent."""
    lines = headers.getall(name, ())
    if not lines:
        return None
    return ", ".join(lines)


def parse_etags(value: str | None) -> tuple[str, ...] | None:
    """The entity-tags of an If-None-Match / If-Match list; ("*",) for "*"; None if malformed.

    Remembered (bounded, as parse_http_date): the clients revalidating one object send the
    same list, and a conditional hit would parse it each time.
    """
    if value is None:
        return None
    if value in _PARSED_ETAGS:
        return _PARSED_ETAGS[value]
    parsed = _parse_etags(value)
    if len(value) <= PARSED_ETAGS_LONGEST:  # a client's long lists are parsed each time: memory stays small
        if len(_PARSED_ETAGS) >= PARSED_ETAGS_LIMIT:
            _PARSED_ETAGS.clear()  # cheaper than LRU bookkeeping; refills at once
        _PARSED_ETAGS[value] = parsed
    return parsed


def _parse_etags(value: str) -> tuple[str, ...] | None:
    text = value.strip()
    if text == "*":
        return ("*",)
    tags: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos] in ", \t":
            pos += 1
            continue
        m = _ETAG_RE.match(text, pos)
        if not m:
            return None
        tags.append((m.group(1) or "") + m.group(2))
        pos = m.end()
    return tuple(tags)


PARSED_ETAGS_LIMIT = 4096
PARSED_ETAGS_LONGEST = 256  # characters: the memo holds at most about 1 MiB of values
_PARSED_ETAGS: dict[str, tuple[str, ...] | None] = {}


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def any_weak_match(tags: Iterable[str], etag: str) -> bool:
    """Does any of `tags` match `etag` by weak comparison (RFC 9110 §8.8.3.2)?"""
    wanted = _opaque(etag)  # once, not once per tag as weak_match would
    return any(_opaque(tag) == wanted for tag in tags)


def weak_match(a: str, b: str) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, W/ ignored."""
    return _opaque(a) == _opaque(b)


def strong_match(a: str, b: str) -> bool:
    """Strong comparison (RFC 9110 §8.8.3.2): neither weak and opaque tags equal."""
    return not a.startswith("W/") and not b.startswith("W/") and a == b


def connection_listed(headers: Headers) -> frozenset[str]:
    """Field names listed in Connection (RFC 9110 §7.6.1), lower-case."""
    return connection_options(", ".join(headers.getall("Connection", ())))


@functools.lru_cache(maxsize=256)
def connection_options(connection: str) -> frozenset[str]:
    """The names a Connection value (its lines joined with commas) lists, lower-case.

    Memoised: nearly every request and response says "keep-alive" or "close"."""
    return frozenset(n.strip().lower() for n in connection.split(",") if n.strip())


def end_to_end(headers: Headers, drop: Iterable[str] = (), *, underscores: bool = True) -> CIMultiDict[str]:
    """A copy without hop-by-hop fields, the fields Connection names, and `drop`.

    underscores=False also drops every field whose name has "_" (nginx's
    `underscores_in_headers off`): CGI and WSGI origins read `X_Forwarded_Host`
    as `X-Forwarded-Host`, an unkeyed input the drop list would miss.
    """
    remove = _removed(tuple(drop))
    if "connection" in headers:
        remove = _also(remove, connection_listed(headers))
    # One scan in C first: a name with "_" is rare, and the set below walks every name in Python.
    if not underscores and "_" in "".join(headers.keys()):
        remove = remove | {name.lower() for name in headers if "_" in name}
    out = CIMultiDict(headers)
    # A handful of case-insensitive lookups in C beat lower-casing every field name.
    for name in remove:
        if name in out:
            del out[name]
    return out


def fields_end_to_end(
    raw: Iterable[tuple[bytes, bytes]],
    connection: str | None,
    drop: Iterable[str] = (),
    *,
    underscores: bool = True,
) -> CIMultiDict[str]:
    """end_to_end of fields as received (bytes, in order), `connection` their Connection value.

    The same fields as end_to_end(CIMultiDict of them decoded), built in one pass that
    decodes only what is kept (a request's fields go to the origin this way on every miss).
    """
    remove = _removed(tuple(drop))
    if connection is not None:
        remove = _also(remove, connection_options(connection))
    kept = []
    for raw_name, raw_value in raw:
        name = raw_name.decode("utf-8", "surrogateescape")
        if name.lower() in remove or (not underscores and "_" in name):
            continue
        # As aiohttp decodes fields: bytes that are not UTF-8 survive the round trip.
        kept.append((name, raw_value.decode("utf-8", "surrogateescape")))
    return CIMultiDict(kept)


@functools.lru_cache(maxsize=256)
def _also(remove: frozenset[str], listed: frozenset[str]) -> frozenset[str]:
    # The same few unions over and over (the drop list and "keep-alive"): a set of ~20 names
    # built per message otherwise.
    return remove | listed


@functools.lru_cache(maxsize=64)
def _removed(drop: tuple[str, ...]) -> frozenset[str]:
    # Callers pass a few fixed tuples (from the config): lower-case them once.
    return HOP_BY_HOP | {d.lower() for d in drop}
