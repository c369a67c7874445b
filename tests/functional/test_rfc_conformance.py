"""RFC conformance, second pass (issue 11): an origin sends exactly the headers named, the real
proxy in front of it. Each test names the RFC section it proves and counts what reached the origin.
"""

from __future__ import annotations

import email.utils
import time

import pytest
from multidict import CIMultiDict

from proxy.config import PolicyConfig
from tests.functional.conftest import (
    FakeClock,
    Origin,
    Proxy,
    ProxyFactory,
    StartScripted,
    cache_status,
)

# ---------------------------------------------------------------- RFC 9111 §5.3: invalid Expires

# Ten days after the fake clock's start (Mon, 25 Jan 2027 08:00:00 GMT), spelled three valid ways
# (RFC 9110 §5.6.7) and several invalid ones: an invalid Expires is already expired.
EXPIRES = [
    pytest.param("Mon, 25 Jan 2027 08:00:00 GMT", True, id="9110-5.6.7-imf-fixdate"),
    pytest.param("Monday, 25-Jan-27 08:00:00 GMT", True, id="9110-5.6.7-rfc850"),
    pytest.param("Mon Jan 25 08:00:00 2027", True, id="9110-5.6.7-asctime"),
    pytest.param("Mon, 25 Jan 2027 08:00:00 UTC", False, id="9111-5.3-utc-zone"),
    pytest.param("Mon, 25 Jan 27 08:00:00 GMT", False, id="9111-5.3-two-digit-year"),
    pytest.param("Mon 25 Jan 2027 08:00:00 GMT", False, id="9111-5.3-no-comma"),
    pytest.param("Mon, 25 Jan 2027 8:00:00 GMT", False, id="9111-5.3-one-digit-hour"),
]


@pytest.mark.parametrize(("expires", "fresh"), EXPIRES)
async def test_rfc9111_s5_3_only_http_dates_make_expires_fresh(
    proxy: Proxy, origin: Origin, clock: FakeClock, expires: str, fresh: bool
) -> None:
    params = [("h", f"Expires:{expires}"), ("h", 'ETag:"e1"'), ("body", "x")]
    await proxy.get("/respond", params=params)
    clock.advance(60)
    second, _ = await proxy.get("/respond", params=params)
    assert ("hit" in cache_status(second).split(";")) is fresh
    assert await origin.hits("/respond") == (1 if fresh else 2)


# ------------------------------------------------- RFC 9213 §2.1: a wrongly typed targeted field

TARGETED = [
    # CDN-Cache-Control next to Cache-Control: no-store; stored only when the targeted field is valid.
    # A wrongly typed member spoils the whole field, even next to a valid s-maxage.
    pytest.param("s-maxage=10000", True, id="9213-2.2-valid-field-wins"),
    pytest.param('max-age="10000"', False, id="9213-2.1-string"),
    pytest.param("s-maxage=10000, max-age=10000.0", False, id="9213-2.1-decimal"),
    pytest.param("s-maxage=10000, max-age=-10000", False, id="9213-2.1-negative"),
    pytest.param("s-maxage=10000, max-age=(10000)", False, id="9213-2.1-inner-list"),
    pytest.param('s-maxage=10000, public="yes"', False, id="9213-2.1-string-flag"),
]


@pytest.mark.parametrize(("targeted", "stored"), TARGETED)
async def test_rfc9213_s2_1_wrongly_typed_cdn_cache_control_is_ignored(
    proxy: Proxy, origin: Origin, clock: FakeClock, targeted: str, stored: bool
) -> None:
    params = [("h", "Cache-Control:no-store"), ("h", f"CDN-Cache-Control:{targeted}"), ("body", "x")]
    first, _ = await proxy.get("/respond", params=params)
    assert ("stored" in cache_status(first)) is stored
    clock.advance(60)
    second, _ = await proxy.get("/respond", params=params)
    assert ("hit" in cache_status(second).split(";")) is stored
    assert await origin.hits("/respond") == (1 if stored else 2)


# ----------------------------------------- RFC 9213 §1: CDN-Cache-Control goes on downstream

TARGETED_FIELDS = {
    "CDN-Cache-Control": "max-age=60",
    "Surrogate-Control": "max-age=60",
    "edge-test-Cache-Control": "max-age=60",  # named after this node (make_config: edge-test)
}

DELIVERED = [
    # (policy.strip_targeted_fields, the targeted fields a client receives)
    pytest.param(None, {"CDN-Cache-Control"}, id="9213-1-default-forwards-cdn-cache-control"),
    pytest.param((), set(TARGETED_FIELDS), id="9213-1-nothing-stripped"),
    pytest.param(
        ("CDN-Cache-Control",), {"Surrogate-Control", "edge-test-Cache-Control"}, id="9213-1-listed"
    ),
]


@pytest.mark.parametrize(("strip", "delivered"), DELIVERED)
@pytest.mark.parametrize("cacheable", [True, False], ids=["stored-and-hit", "pass-through"])
async def test_rfc9213_s1_only_fields_aimed_at_this_cache_are_removed(
    start_proxy: ProxyFactory,
    origin: Origin,
    clock: FakeClock,
    strip: tuple[str, ...] | None,
    delivered: set[str],
    cacheable: bool,
) -> None:
    policy = PolicyConfig() if strip is None else PolicyConfig(strip_targeted_fields=strip)
    proxy = await start_proxy(policy=policy)
    fields = dict(TARGETED_FIELDS)
    if not cacheable:
        fields["CDN-Cache-Control"] = "no-store"  # the first targeted field: nothing is stored
    params = [("h", f"{name}:{value}") for name, value in fields.items()]
    params += [("h", "Cache-Control:max-age=5"), ("body", "x")]
    first, _ = await proxy.get("/respond", params=params)
    clock.advance(10)
    second, _ = await proxy.get("/respond", params=params)
    assert ("hit" in cache_status(second).split(";")) is cacheable
    for resp in (first, second):
        assert {name for name in TARGETED_FIELDS if name in resp.headers} == delivered
        assert resp.headers["Cache-Control"] == "max-age=5"  # passed through unchanged


# ------------------------------------- RFC 9111 §4.3.4: a 304 without a validator (raw origin)


LAST_MODIFIED = "Sat, 01 Jan 2027 00:00:00 GMT"
ORIGIN_DATE = "Fri, 15 Jan 2027 08:00:00 GMT"  # the fake clock's start

NOT_MODIFIED = [
    # (validator fields of the stored 200, fields of the 304, conditional field sent, seconds fresh after)
    pytest.param('ETag: "abcd"', "", ("If-None-Match", '"abcd"'), 10, id="9111-4.3.4-etag-bare-304"),
    pytest.param(
        'ETag: "abcd"',
        "Cache-Control: max-age=20\r\n",
        ("If-None-Match", '"abcd"'),
        20,
        id="9111-4.3.4-etag-304-with-new-max-age",
    ),
    pytest.param(
        f"Last-Modified: {LAST_MODIFIED}",
        "",
        ("If-Modified-Since", LAST_MODIFIED),
        10,
        id="9111-4.3.4-last-modified-bare-304",
    ),
    pytest.param(
        f"Date: {ORIGIN_DATE}",
        "",
        ("If-Modified-Since", ORIGIN_DATE),
        10,
        id="9111-4.3.4-no-validator-at-all",
    ),
]


@pytest.mark.parametrize(("validator", "not_modified", "conditional", "fresh_for"), NOT_MODIFIED)
async def test_rfc9111_s4_3_4_304_without_validator_freshens_without_a_second_request(
    start_proxy: ProxyFactory,
    scripted_origin: StartScripted,
    clock: FakeClock,
    validator: str,
    not_modified: str,
    conditional: tuple[str, str],
    fresh_for: int,
) -> None:
    ok = f"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=10\r\n{validator}\r\n\r\nhello"
    bare_304 = f"HTTP/1.1 304 Not Modified\r\n{not_modified}\r\n"
    origin = await scripted_origin([ok.encode(), bare_304.encode()])
    proxy = await start_proxy(origin_url=origin.url)
    await proxy.get("/doc")
    clock.advance(30)
    revalidated, body = await proxy.get("/doc")
    assert (revalidated.status, body) == (200, b"hello")
    assert "fwd=stale" in cache_status(revalidated) and "fwd-status=304" in cache_status(revalidated)
    assert len(origin.requests) == 2  # no second, unconditional request
    name, value = conditional
    assert origin.sent(1, name) == [value]
    clock.advance(fresh_for - 1)
    hit, body = await proxy.get("/doc")  # freshened: fresh again from the 304 on
    assert body == b"hello" and "hit" in cache_status(hit).split(";")
    assert hit.headers["Age"] == str(fresh_for - 1)
    assert len(origin.requests) == 2


# ------------------------------------------------------------ RFC 9111 §5.2.2.3: must-understand

MUST_UNDERSTAND = [
    # (status, Cache-Control, stored?): a status this cache understands lets must-understand
    # override no-store; any other status with must-understand is not stored.
    pytest.param(200, "must-understand, no-store, max-age=60", True, id="9111-5.2.2.3-200-understood"),
    pytest.param(404, "must-understand, no-store, max-age=60", True, id="9111-5.2.2.3-404-understood"),
    pytest.param(299, "must-understand, no-store, max-age=60", False, id="9111-5.2.2.3-299-not-understood"),
    pytest.param(299, "must-understand, max-age=60", False, id="9111-5.2.2.3-299-even-without-no-store"),
    pytest.param(200, "no-store, max-age=60", False, id="9111-5.2.2.5-no-store-alone"),
]


@pytest.mark.parametrize(("status", "cache_control", "stored"), MUST_UNDERSTAND)
async def test_rfc9111_s5_2_2_3_must_understand(
    proxy: Proxy, origin: Origin, clock: FakeClock, status: int, cache_control: str, stored: bool
) -> None:
    params = [("status", str(status)), ("h", f"Cache-Control:{cache_control}"), ("body", "x")]
    first, _ = await proxy.get("/respond", params=params)
    assert first.status == status
    clock.advance(30)
    second, _ = await proxy.get("/respond", params=params)
    assert second.status == status
    assert ("hit" in cache_status(second).split(";")) is stored
    assert await origin.hits("/respond") == (1 if stored else 2)


# ---------------------------------------------- Accept-Language normalised for Vary (RFC 9111 §4.1)

ACCEPT_LANGUAGE = [
    # (first request's Accept-Language, what the origin is sent, a later spelling, served from cache?)
    pytest.param("en-us, EN;q=0.90", "en-US,en;q=0.9", "en-US,en;q=0.9", True, id="9111-4.1-case-spaces-q"),
    pytest.param("en;q=0.9, en-US", "en-US,en;q=0.9", "EN-US ,en;q=0.900", True, id="9111-4.1-weight-order"),
    pytest.param("de, fr", "de,fr", "fr, de", False, id="9111-4.1-equal-weights-order-kept"),
    pytest.param("de, fr;q=0", "de,fr;q=0", "de", False, id="9111-4.1-q0-is-not-absence"),
    pytest.param("en;level=1", "en;level=1", "EN;level=1", False, id="9111-4.1-unknown-form-as-sent"),
]


@pytest.mark.parametrize(("first", "sent", "later", "hit"), ACCEPT_LANGUAGE)
async def test_rfc9111_s4_1_accept_language_spellings_share_a_variant(
    proxy: Proxy, origin: Origin, first: str, sent: str, later: str, hit: bool
) -> None:
    _, body = await proxy.get("/vary/Accept-Language", headers={"Accept-Language": first})
    assert body == f"Accept-Language={sent}".encode()  # what the origin answered is what it was sent
    two, body2 = await proxy.get("/vary/Accept-Language", headers={"Accept-Language": later})
    assert ("hit" in cache_status(two).split(";")) is hit
    if hit:
        assert body2 == body
    assert await origin.hits("/vary/Accept-Language") == (1 if hit else 2)


# ------------------------------------- RFC 9111 §4.3.2: If-Modified-Since against Date, from cache

IF_MODIFIED_SINCE = [
    # (If-Modified-Since relative to the stored Date, as an HTTP-date format, answer from cache)
    pytest.param(0, "%a, %d %b %Y %H:%M:%S GMT", 304, id="9111-4.3.2-equal-to-date"),
    pytest.param(3600, "%a, %d %b %Y %H:%M:%S GMT", 304, id="9111-4.3.2-after-date"),
    pytest.param(0, "%A, %d-%b-%y %H:%M:%S GMT", 304, id="9110-5.6.7-rfc850"),
    pytest.param(0, "%a %b %e %H:%M:%S %Y", 304, id="9110-5.6.7-asctime"),
    pytest.param(-1, "%a, %d %b %Y %H:%M:%S GMT", 200, id="9111-4.3.2-before-date"),
    pytest.param(3600, "%a, %d %b %Y %H:%M:%S UTC", 200, id="9110-13.1.3-invalid-date-ignored"),
]


@pytest.mark.parametrize(("offset", "spelling", "status"), IF_MODIFIED_SINCE)
async def test_rfc9111_s4_3_2_if_modified_since_compared_with_date(
    proxy: Proxy, origin: Origin, clock: FakeClock, offset: int, spelling: str, status: int
) -> None:
    first, _ = await proxy.get("/max-age/60")
    assert "Last-Modified" not in first.headers and "ETag" not in first.headers
    stored_date = email.utils.parsedate_to_datetime(first.headers["Date"]).timestamp()
    since = time.strftime(spelling, time.gmtime(stored_date + offset))
    clock.advance(5)
    resp, body = await proxy.get("/max-age/60", headers={"If-Modified-Since": since})
    assert resp.status == status
    assert "hit" in cache_status(resp).split(";")
    if status == 304:
        assert body == b"" and resp.headers["Date"] == first.headers["Date"]
    assert await origin.hits("/max-age/60") == 1


# --------------------------- RFC 9112 §6.3: a body ends at Content-Length, whatever follows (raw origin)

TEN_AND_MORE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nCache-Control: max-age=10\r\n\r\n0123456789" + b"x" * 36
)


async def test_rfc9112_s6_3_bytes_past_content_length_are_not_part_of_the_response(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock
) -> None:
    origin = await scripted_origin([TEN_AND_MORE])
    proxy = await start_proxy(origin_url=origin.url)
    first, body = await proxy.get("/ten")
    assert (first.status, body) == (200, b"0123456789")
    assert first.headers["Content-Length"] == "10"
    assert "stored" in cache_status(first)
    hit, body = await proxy.get("/ten")
    assert body == b"0123456789" and "hit" in cache_status(hit).split(";")
    clock.advance(20)
    again, body = await proxy.get("/ten")  # stale: asked again, on a new connection
    assert (again.status, body) == (200, b"0123456789")
    assert len(origin.requests) == 2
    assert origin.accepts == 2  # the connection the extra bytes came on was never reused


# ------------------------------ RFC 9111 §4.3.5: a HEAD response updates the stored GET response

STORED_GET = (
    b'HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\nETag: "v1"\r\nX-Version: 1\r\n'
    b"Content-Length: 5\r\n\r\nhello"
)


def head_200(fields: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\nCache-Control: max-age=100\r\nX-Version: 2\r\n{fields}\r\n".encode()


HEAD_ANSWERS = [
    # (the origin's answer to the HEAD, does it update the stored response?)
    pytest.param(
        b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=100\r\nX-Version: 2\r\n\r\n",
        True,
        id="9111-4.3.4-304",
    ),
    pytest.param(head_200('ETag: "v1"\r\nContent-Length: 5\r\n'), True, id="9111-4.3.5-same-etag-and-length"),
    pytest.param(head_200('ETag: "v1"\r\n'), True, id="9111-4.3.5-same-etag-no-length"),
    pytest.param(head_200('ETag: "v2"\r\nContent-Length: 5\r\n'), False, id="9111-4.3.5-other-etag"),
    pytest.param(head_200('ETag: "v1"\r\nContent-Length: 6\r\n'), False, id="9111-4.3.5-other-length"),
    pytest.param(head_200("Content-Length: 5\r\n"), False, id="9111-4.3.5-no-validator"),
]


@pytest.mark.parametrize(("answer", "updates"), HEAD_ANSWERS)
async def test_rfc9111_s4_3_5_a_head_response_updates_the_stored_get_response(
    start_proxy: ProxyFactory, scripted_origin: StartScripted, clock: FakeClock, answer: bytes, updates: bool
) -> None:
    again = b'HTTP/1.1 200 OK\r\nCache-Control: max-age=10\r\nETag: "v3"\r\nContent-Length: 5\r\n\r\nnewer'
    origin = await scripted_origin([STORED_GET, answer, again])
    proxy = await start_proxy(origin_url=origin.url)
    await proxy.get("/doc")
    clock.advance(30)  # stale: the HEAD goes to the origin, as a HEAD, with the stored validator
    async with proxy.request("HEAD", "/doc") as head:
        assert head.status == 200 and await head.read() == b""
        assert head.headers["X-Version"] == "2" and head.headers["Content-Length"] in ("5", "6")
        assert "fwd=stale" in cache_status(head)
        assert ("stored" in cache_status(head)) is True  # updated, or marked stale: written either way
    assert origin.method(1) == "HEAD" and origin.sent(1, "If-None-Match") == ['"v1"']
    clock.advance(50)  # 80 s after the first response, 50 s after the HEAD
    resp, body = await proxy.get("/doc")
    if updates:
        # Fresh again for the HEAD's max-age=100, with its fields and the stored body.
        assert "hit" in cache_status(resp).split(";"), cache_status(resp)
        assert (body, resp.headers["X-Version"], resp.headers["Age"]) == (b"hello", "2", "50")
        assert len(origin.requests) == 2
    else:
        # Another representation, or no telling: the stored response is stale and is fetched again.
        assert "fwd=stale" in cache_status(resp) and body == b"newer"
        assert origin.method(2) == "GET" and len(origin.requests) == 3


# --------------------- RFC 9110 §13.2.2: the order preconditions are evaluated in, on a stored response

STORED_LAST_MODIFIED = "Fri, 01 Jan 2027 00:00:00 GMT"
EARLIER = "Thu, 31 Dec 2026 00:00:00 GMT"
STORED = [
    ("h", 'ETag:"v1"'),
    ("h", f"Last-Modified:{STORED_LAST_MODIFIED}"),
    ("h", "Cache-Control:max-age=600"),
    ("body", "0123456789"),
]
# (request fields, status, answered by the cache): If-Match and If-Unmodified-Since only apply to an
# origin (RFC 9111 §4.3.2), which then evaluates every precondition in order; a cache evaluates
# If-None-Match (step 3), If-Modified-Since only without it (step 4), then Range (step 5).
PRECONDITIONS = [
    pytest.param({}, 200, True, id="none"),
    pytest.param({"If-None-Match": '"v1"'}, 304, True, id="9110-13.1.2-inm-matches"),
    pytest.param({"If-None-Match": 'W/"v1"'}, 304, True, id="9110-13.1.2-inm-weak-comparison"),
    pytest.param({"If-None-Match": '"v0", "v1"'}, 304, True, id="9110-13.1.2-inm-list"),
    pytest.param({"If-None-Match": "*"}, 304, True, id="9110-13.1.2-inm-star"),
    pytest.param({"If-None-Match": '"v0"'}, 200, True, id="9110-13.1.2-inm-no-match"),
    pytest.param({"If-Modified-Since": STORED_LAST_MODIFIED}, 304, True, id="9110-13.1.3-ims-not-modified"),
    pytest.param({"If-Modified-Since": EARLIER}, 200, True, id="9110-13.1.3-ims-modified"),
    pytest.param({"If-Modified-Since": "yesterday"}, 200, True, id="9110-13.1.3-ims-invalid-ignored"),
    pytest.param(
        {"If-None-Match": '"v1"', "If-Modified-Since": EARLIER}, 304, True, id="9110-13.2.2-inm-before-ims"
    ),
    pytest.param(
        {"If-None-Match": '"v0"', "If-Modified-Since": STORED_LAST_MODIFIED},
        200,
        True,
        id="9110-13.2.2-ims-ignored-with-inm",
    ),
    pytest.param(
        {"If-None-Match": '"v1"', "Range": "bytes=0-1"}, 304, True, id="9110-13.2.2-inm-before-range"
    ),
    pytest.param(
        {"If-Modified-Since": STORED_LAST_MODIFIED, "Range": "bytes=0-1"},
        304,
        True,
        id="9110-13.2.2-ims-before-range",
    ),
    pytest.param({"If-None-Match": '"v0"', "Range": "bytes=0-1"}, 206, True, id="9110-13.2.2-range-last"),
    pytest.param({"If-Range": '"v1"', "Range": "bytes=0-1"}, 206, True, id="9110-13.1.5-if-range-matches"),
    pytest.param({"If-Range": '"v0"', "Range": "bytes=0-1"}, 200, True, id="9110-13.1.5-if-range-differs"),
    pytest.param({"If-Match": '"v1"', "If-None-Match": '"v1"'}, 200, False, id="9111-4.3.2-if-match-origin"),
    pytest.param({"If-Match": '"v0"'}, 200, False, id="9111-4.3.2-if-match-not-evaluated-here"),
    pytest.param(
        {"If-Unmodified-Since": EARLIER, "If-Modified-Since": STORED_LAST_MODIFIED},
        200,
        False,
        id="9111-4.3.2-ius-origin",
    ),
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(("fields", "status", "from_cache"), PRECONDITIONS)
async def test_rfc9110_s13_2_2_preconditions_on_a_stored_response_in_order(
    proxy: Proxy, origin: Origin, method: str, fields: dict[str, str], status: int, from_cache: bool
) -> None:
    """A stored response answers If-None-Match before If-Modified-Since (ignored when If-None-Match is
    there) before Range; If-Match / If-Unmodified-Since go to the origin (the stub ignores them: 200)."""
    await proxy.get("/respond", params=STORED)
    async with proxy.request(method, "/respond", params=STORED, headers=fields) as resp:
        body = await resp.read()
    if method == "HEAD" and status == 206:
        status = 200  # Range applies to GET only (RFC 9110 §14.2)
    assert resp.status == status
    assert ("hit" in cache_status(resp).split(";")) == from_cache
    assert len(body) == {200: 10 if method == "GET" else 0, 206: 2, 304: 0}[status]
    assert await origin.hits("/respond") == (1 if from_cache else 2)


async def test_rfc9111_s4_3_2_an_origins_412_passes_and_leaves_the_stored_response(
    start_proxy: ProxyFactory, scripted_origin: StartScripted
) -> None:
    """If-Match is the origin's to evaluate (§4.3.2): its 412 goes to that client and is never stored,
    whatever lifetime it carries."""
    ok = b'HTTP/1.1 200 OK\r\nETag: "v1"\r\nCache-Control: max-age=600\r\nContent-Length: 4\r\n\r\npage'
    failed = (
        b"HTTP/1.1 412 Precondition Failed\r\nCache-Control: max-age=600\r\nContent-Length: 5\r\n\r\nfail\n"
    )
    upstream = await scripted_origin([ok, failed])
    proxy = await start_proxy(origin_url=upstream.url)
    await proxy.get("/page")
    resp, body = await proxy.get("/page", headers={"If-Match": '"v0"'})
    assert (resp.status, body) == (412, b"fail\n") and upstream.sent(1, "If-Match") == ['"v0"']
    resp, body = await proxy.get("/page")
    assert (resp.status, body) == (200, b"page") and "hit" in cache_status(resp).split(";")
    assert len(upstream.requests) == 2


SINGLETON_TWICE = [
    pytest.param([("Range", "bytes=0-1"), ("Range", "bytes=5-6")], id="9110-14.2-range"),
    pytest.param(
        [("If-Modified-Since", STORED_LAST_MODIFIED), ("If-Modified-Since", EARLIER)], id="9110-13.1.3-ims"
    ),
    pytest.param(
        [("Range", "bytes=0-1"), ("If-Range", '"v1"'), ("If-Range", '"v0"')], id="9110-13.1.5-if-range"
    ),
]


@pytest.mark.parametrize("fields", SINGLETON_TWICE)
async def test_rfc9110_s5_3_a_singleton_condition_sent_twice_is_invalid_and_ignored(
    proxy: Proxy, origin: Origin, fields: list[tuple[str, str]]
) -> None:
    """Range, If-Range and If-Modified-Since take one value: two field lines are one invalid value
    (RFC 9110 §5.3 combines them with a comma), which the recipient ignores (§13.1.3: a field value of
    more than one member). The first line alone was honoured: a 206 or a 304 the second line denied."""
    await proxy.get("/respond", params=STORED)
    resp, body = await proxy.get("/respond", params=STORED, headers=CIMultiDict(fields))
    assert (resp.status, body) == (200, b"0123456789")
    assert "hit" in cache_status(resp).split(";") and await origin.hits("/respond") == 1


@pytest.mark.parametrize(
    ("last_modified", "status"),
    [(ORIGIN_DATE, 200), ("Fri, 15 Jan 2027 07:59:59 GMT", 206)],
    ids=["9110-13.1.5-weak-date-is-false", "9110-8.8.2.2-a-second-before-date-is-strong"],
)
async def test_rfc9110_s13_1_5_an_if_range_date_matches_only_a_strong_last_modified(
    proxy: Proxy, origin: Origin, last_modified: str, status: int
) -> None:
    """A Last-Modified is a strong validator only when the stored Date is at least a second later
    (§8.8.2.2): the representation may have changed twice within that second. An If-Range naming a
    weak one is false (§13.1.5), and the whole 200 is sent; it was honoured with a 206."""
    stored = [
        ("h", f"Last-Modified:{last_modified}"),
        ("h", "Cache-Control:max-age=600"),
        ("body", "0123456789"),
    ]
    first, _ = await proxy.get("/respond", params=stored)
    assert first.headers["Date"] == ORIGIN_DATE
    fields = {"Range": "bytes=0-1", "If-Range": last_modified}
    resp, body = await proxy.get("/respond", params=stored, headers=fields)
    assert (resp.status, body) == (status, b"0123456789" if status == 200 else b"01")
    assert "hit" in cache_status(resp).split(";") and await origin.hits("/respond") == 1
