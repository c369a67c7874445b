"""proxy.keys: the primary cache key (RFC 9111 §2), Accept-Encoding normalisation and Vary (§4.1)."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest

from proxy.config import KeyConfig
from proxy.entry import CachedResource, StoredResponse
from proxy.keys import (
    accept_encoding_for_range,
    normalise_accept_encoding,
    normalise_accept_language,
    normalise_field_value,
    primary_key,
    request_vary_values,
    select_variant,
    variant_matches,
    vary_names,
    with_variant,
)

from .support import NOW, entry, hdrs, http_date

KEYS = KeyConfig()

# --------------------------------------------------------------------------- primary key (RFC 9111 §2)

PRIMARY = [
    pytest.param(("http", "Example.COM", "/a", ""), "|http://example.com/a", id="9111-2-host-lowercased"),
    pytest.param(("HTTP", "example.com", "/a", ""), "|http://example.com/a", id="9111-2-scheme-lowercased"),
    pytest.param(
        ("http", "example.com:80", "/a", ""), "|http://example.com/a", id="9110-4.2.3-http-80-removed"
    ),
    pytest.param(
        ("https", "example.com:443", "/a", ""), "|https://example.com/a", id="9110-4.2.3-https-443-removed"
    ),
    pytest.param(
        ("https", "example.com:80", "/a", ""), "|https://example.com:80/a", id="9110-4.2.3-other-port-kept"
    ),
    pytest.param(
        ("http", "example.com:8080", "/a", ""), "|http://example.com:8080/a", id="9110-4.2.3-non-default-kept"
    ),
    pytest.param(
        ("http", "[::1]:80", "/a", ""), "|http://[::1]/a", id="9110-4.2.3-ipv6-default-port-removed"
    ),
    pytest.param(("http", "[::1]", "/a", ""), "|http://[::1]/a", id="9110-4.2.3-ipv6-without-port"),
    pytest.param(("http", "example.com", "/A", ""), "|http://example.com/A", id="9110-4.2.3-path-case-kept"),
    pytest.param(
        ("http", "example.com", "", ""), "|http://example.com/", id="9110-4.2.3-empty-path-is-slash"
    ),
    pytest.param(
        ("http", "example.com", "/a", "b=2&a=1"),
        "|http://example.com/a?b=2&a=1",
        id="9111-2-query-kept-as-is-by-default",
    ),
]


@pytest.mark.parametrize(("parts", "expected"), PRIMARY)
def test_rfc9111_s2_primary_key(parts: tuple[str, str, str, str], expected: str) -> None:
    assert primary_key(*parts, KEYS) == expected


def test_rfc9111_s2_get_and_head_share_a_key() -> None:
    """The method is not an input of the key, so GET and HEAD (the only looked-up methods) share one.

    test_decide.py::test_requirements_s11_head_answered_from_stored_get shows the HEAD side.
    """
    assert "method" not in inspect.signature(primary_key).parameters


def test_namespace_prefixes_every_key() -> None:
    v1 = primary_key("http", "example.com", "/a", "", KeyConfig(namespace="v1"))
    v2 = primary_key("http", "example.com", "/a", "", KeyConfig(namespace="v2"))
    assert v1 == "v1|http://example.com/a"
    assert v1 != v2


QUERIES = [
    pytest.param(KeyConfig(sort_query=True), "b=2&a=1&c=", "a=1&b=2&c=", id="sort"),
    # A repeated name keeps its values' order: an origin taking the first (or last) answers
    # `id=2&id=1` and `id=1&id=2` differently.
    pytest.param(
        KeyConfig(sort_query=True), "b=0&a=2&a=1", "a=2&a=1&b=0", id="sort-keeps-a-repeated-names-order"
    ),
    # Parameter cloaking: an origin that splits on ";" (Rack 2, Go < 1.17) sees callback=evil.
    pytest.param(
        KeyConfig(ignore_query_params=("utm_*",)),
        "utm_source=x;callback=evil",
        "utm_source=x;callback=evil",
        id="cloaking-a-query-with-a-semicolon-is-keyed-as-sent",
    ),
    pytest.param(
        KeyConfig(keep_query_params=("id",)),
        "id=1&x=2;callback=evil",
        "id=1&x=2;callback=evil",
        id="cloaking-keep",
    ),
    pytest.param(KeyConfig(sort_query=True), "b=1;a=2", "b=1;a=2", id="cloaking-sort"),
    pytest.param(
        KeyConfig(ignore_query_params=("utm_*", "fbclid")),
        "id=1&utm_source=x&fbclid=y&utm_medium=z&fbclid2=w",
        "id=1&fbclid2=w",
        id="ignore-globs-and-exact-names",
    ),
    pytest.param(KeyConfig(ignore_query_params=("utm_*",)), "utm_source=x", "", id="ignore-everything"),
    pytest.param(
        KeyConfig(sort_query=True, ignore_query_params=("utm_*",)),
        "z=1&utm_a=1&b=2",
        "b=2&z=1",
        id="sort-and-ignore",
    ),
    pytest.param(
        KeyConfig(ignore_query_params=("UTM_*",)), "utm_a=1", "utm_a=1", id="ignore-is-case-sensitive"
    ),
]


@pytest.mark.parametrize(("opts", "query", "expected_query"), QUERIES)
def test_rfc9111_s2_configured_query_handling(opts: KeyConfig, query: str, expected_query: str) -> None:
    expected = "|http://example.com/p" + ("?" + expected_query if expected_query else "")
    assert primary_key("http", "example.com", "/p", query, opts) == expected


@pytest.mark.parametrize(
    "opts",
    [KeyConfig(sort_query=True), KeyConfig(ignore_query_params=("utm_*",))],
    ids=["sort", "ignore"],
)
def test_rfc9111_s2_query_normalisation_never_merges_distinct_bytes(opts: KeyConfig) -> None:
    """Two URLs whose queries differ in raw bytes (here: not UTF-8) must not share one entry."""
    ff = primary_key("http", "example.com", "/p", "q=%FF", opts)
    fe = primary_key("http", "example.com", "/p", "q=%FE", opts)
    assert ff != fe
    assert ff.endswith("?q=%FF")


# ----------------------------------------------------------------- Accept-Encoding (RFC 9110 §12.5.3)

AE = [
    pytest.param(None, "identity", id="absent"),
    pytest.param("", "identity", id="9110-12.5.3-empty-means-identity"),
    pytest.param("gzip", "gzip", id="single"),
    pytest.param("gzip, deflate, br", "br", id="server-preference-order"),
    pytest.param("GZIP", "gzip", id="9110-8.4.1-coding-case-insensitive"),
    pytest.param(" gzip ; q=0.5 ,\tbr;q=0", "gzip", id="9110-12.4.2-whitespace-and-q"),
    pytest.param("br;q=0, gzip;q=0", "identity", id="9110-12.4.2-q0-not-acceptable"),
    pytest.param("gzip;Q=0", "identity", id="9110-12.4.2-q-name-case-insensitive"),
    pytest.param("gzip;q=abc", "identity", id="invalid-q-not-acceptable"),
    pytest.param("*", "br", id="9110-12.5.3-star-accepts-any"),
    pytest.param("*;q=0", "identity", id="9110-12.5.3-star-q0"),
    pytest.param("br;q=0, *", "gzip", id="9110-12.5.3-star-except-listed"),
    pytest.param("deflate, identity", "identity", id="nothing-preferred"),
    # The highest q-value wins; this cache's order only breaks ties.
    pytest.param("gzip;q=1.0, br;q=0.5", "gzip", id="9110-12.5.3-highest-q-wins"),
    pytest.param("deflate, gzip;q=1.0, *;q=0.5", "gzip", id="9110-12.5.3-star-ranks-below-named"),
    pytest.param("br;q=0.5, gzip;q=0.5", "br", id="equal-q-cache-order"),
    pytest.param("*;q=0.5, gzip;q=0.4", "br", id="star-q-over-a-lower-named"),
    # identity competes when the client names it (itself, or through *).
    pytest.param("gzip;q=0.5, identity", "identity", id="9110-12.5.3-identity-preferred"),
    pytest.param("gzip;q=0.5, identity;q=0.5", "gzip", id="identity-tie-goes-to-the-coding"),
    pytest.param("gzip, identity;q=0", "gzip", id="9110-12.5.3-identity-q0-a-coding-instead"),
    pytest.param("br;q=0, gzip;q=0.1, *;q=0", "gzip", id="9110-12.5.3-star-q0-refuses-identity"),
    # Nothing acceptable, identity refused too: still no coding (§12.5.3 prefers that to a 406).
    pytest.param("identity;q=0", "identity", id="9110-12.5.3-nothing-acceptable"),
]


@pytest.mark.parametrize(("value", "expected"), AE)
def test_requirements_s11_accept_encoding_normalised(value: str | None, expected: str) -> None:
    assert normalise_accept_encoding(value, ("br", "gzip")) == expected


def test_requirements_s11_browser_spellings_collapse_to_one_variant() -> None:
    spellings = [
        "gzip, deflate, br",
        "gzip, deflate, br, zstd",
        "br, gzip",
        "br;q=1.0, gzip;q=0.8, *;q=0.1",
        "BR,GZIP",
        "br;q=1, gzip;q=1",
    ]
    assert {normalise_accept_encoding(s, ("br", "gzip")) for s in spellings} == {"br"}


def test_accept_encoding_configured_order_wins() -> None:
    assert normalise_accept_encoding("br, gzip", ("gzip", "br")) == "gzip"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, "identity", id="absent"),
        pytest.param("gzip, deflate, br", "identity", id="identity-accepted-unlisted"),
        pytest.param("br;q=1, identity;q=0.1", "identity", id="identity-accepted-listed"),
        pytest.param("br, *;q=0.5", "identity", id="identity-accepted-through-star"),
        pytest.param("br, identity;q=0", "br", id="9110-12.5.3-identity-q0"),
        pytest.param("gzip, IDENTITY ; Q=0.0", "gzip", id="9110-12.5.3-identity-q0-spelt-otherwise"),
        pytest.param("*;q=0, gzip", "gzip", id="9110-12.5.3-star-q0-refuses-identity"),
        pytest.param("*;q=0, identity, gzip", "identity", id="identity-listed-over-star-q0"),
        pytest.param("identity;q=0", "identity", id="nothing-acceptable-still-identity"),
    ],
)
def test_a_range_is_keyed_with_identity_unless_the_client_refuses_it(
    value: str | None, expected: str
) -> None:
    assert accept_encoding_for_range(value, ("br", "gzip")) == expected


# ------------------------------------------------------ Accept-Language (RFC 9110 §12.5.4, RFC 4647)

AL = [
    pytest.param("en-US,en;q=0.9", "en-US,en;q=0.9", id="chrome-spelling-unchanged"),
    pytest.param("en-US,en;q=0.5", "en-US,en;q=0.5", id="firefox-spelling-unchanged"),
    pytest.param("EN-us, En;Q=0.90", "en-US,en;q=0.9", id="5646-2.1.1-case-and-q-spelling"),
    pytest.param("zh-hant-tw", "zh-Hant-TW", id="5646-2.1.1-script-title-region-upper"),
    pytest.param("de-CH-x-PHONEBK", "de-CH-x-phonebk", id="5646-2.1.1-private-use-lower"),
    pytest.param("X-Klingon, i-ENOCHIAN", "x-klingon,i-enochian", id="5646-2.1.1-leading-singleton"),
    pytest.param("en ;\tq=0.8 ,  fr", "fr,en;q=0.8", id="9110-5.6.3-ows-and-weight-order"),
    pytest.param("en;q=1.000, fr;q=1", "en,fr", id="9110-12.4.2-q1-is-no-q"),
    pytest.param("da, en-gb;q=0.8, en;q=0.7", "da,en-GB;q=0.8,en;q=0.7", id="9110-12.5.4-rfc-example"),
    pytest.param("fr, de;q=0.5, en", "fr,en,de;q=0.5", id="9110-12.4.2-higher-weight-first"),
    pytest.param("de, fr", "de,fr", id="9110-12.5.4-equal-weights-keep-order"),
    pytest.param("en;q=0.0, *", "*,en;q=0", id="9110-12.4.2-q0-kept-last"),
    pytest.param("en,, ,fr", "en,fr", id="9110-5.6.1-empty-elements"),
    pytest.param("", "", id="9110-5.6.1-empty-list"),
    pytest.param(None, None, id="absent"),
    pytest.param("en;level=1", None, id="other-parameter-not-normalised"),
    pytest.param("en;q=1.5", None, id="9110-12.4.2-bad-qvalue-not-normalised"),
    pytest.param("en;q=0.5555", None, id="9110-12.4.2-four-decimals-not-normalised"),
    pytest.param("en, EN;q=0.5", None, id="range-twice-not-normalised"),
    pytest.param("en_US", None, id="4647-2.1-not-a-language-range"),
    pytest.param("toolongsubtag", None, id="4647-2.1-subtag-over-8"),
]


@pytest.mark.parametrize(("value", "expected"), AL)
def test_rfc9110_s12_5_4_accept_language_canonical(value: str | None, expected: str | None) -> None:
    assert normalise_accept_language(value) == expected
    if expected is not None:
        assert normalise_accept_language(expected) == expected  # a fixed point: forwarding it is stable


# Vary: Accept-Language matching (RFC 9111 §4.1 "normalizing both header field values in a way that
# is known to have identical semantics"): two requests share a variant only when any origin that
# follows RFC 9110 answers them alike. The origin is sent the normalised value, so it answers the
# very value a variant is keyed on (tests/functional/test_rfc_conformance.py).
AL_VARY = [
    # (the request that stored the variant, a later request, same variant?)
    pytest.param("en-US,en;q=0.9", "en-us, EN;q=0.90", True, id="9111-4.1-case-spaces-q-spelling"),
    pytest.param("en;q=0.9, en-US", "en-US,en;q=0.9", True, id="9111-4.1-order-by-weight"),
    pytest.param("de;q=1.0", "de", True, id="9111-4.1-q1-is-no-q"),
    pytest.param("de, fr", "fr, de", False, id="9111-4.1-equal-weights-order-kept"),
    pytest.param("de, fr;q=0.5", "de, fr;q=0.4", False, id="9111-4.1-different-weights"),
    pytest.param("de, fr;q=0", "de", False, id="9111-4.1-q0-is-not-absence"),
    pytest.param("en-GB", "en", False, id="9111-4.1-different-ranges"),
    pytest.param("en;level=1,fr", "en;level=1,   fr", True, id="9111-4.1-unknown-form-whitespace-only"),
    pytest.param("en;level=1", "EN;level=1", False, id="9111-4.1-unknown-form-case-kept"),
]


@pytest.mark.parametrize(("stored_with", "later", "same"), AL_VARY)
def test_rfc9111_s4_1_accept_language_vary_matching(stored_with: str, later: str, same: bool) -> None:
    names = ("accept-language",)
    variant = entry(
        vary_names=names, vary_values=request_vary_values(names, hdrs(("Accept-Language", stored_with)))
    )
    assert variant_matches(variant, hdrs(("Accept-Language", later))) is same


# --------------------------------------------------------------------------- Vary (RFC 9111 §4.1)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(["Accept-Encoding"], ("accept-encoding",), id="9111-4.1-one-name"),
        pytest.param(
            ["Accept-Language, accept-encoding", "ACCEPT-ENCODING"],
            ("accept-encoding", "accept-language"),
            id="9111-4.1-names-combined-deduplicated",
        ),
        pytest.param(["*"], ("*",), id="9111-4.1-star"),
        pytest.param(["Accept", "*"], ("*",), id="9111-4.1-star-anywhere"),
        pytest.param([], (), id="9111-4.1-absent"),
        pytest.param([" , "], (), id="9111-4.1-empty-members"),
    ],
)
def test_rfc9111_s4_1_vary_names(lines: list[str], expected: tuple[str, ...]) -> None:
    assert vary_names(lines) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(["en,  fr"], "en,fr", id="9111-4.1-whitespace-around-commas"),
        pytest.param(["en", "fr"], "en,fr", id="9111-4.1-repeated-lines-combined"),
        pytest.param(["  a \t b  "], "a b", id="9111-4.1-inner-whitespace"),
        pytest.param([""], "", id="9111-4.1-empty-value"),
        pytest.param([], None, id="9111-4.1-absent"),
    ],
)
def test_rfc9111_s4_1_field_value_normalisation(lines: list[str], expected: str | None) -> None:
    assert normalise_field_value(lines) == expected


LANG = entry(vary_names=("accept-language",), vary_values=("en,fr",))
NO_LANG = entry(vary_names=("accept-language",), vary_values=(None,))

MATCHES = [
    pytest.param(LANG, [("Accept-Language", "en, fr")], True, id="9111-4.1-whitespace-normalised"),
    pytest.param(LANG, [("accept-language", "en"), ("ACCEPT-LANGUAGE", "fr")], True, id="9111-4.1-combined"),
    pytest.param(LANG, [("Accept-Language", "fr,en")], False, id="9111-4.1-order-matters"),
    pytest.param(LANG, [], False, id="9111-4.1-absent-vs-present"),
    pytest.param(NO_LANG, [], True, id="9111-4.1-absent-matches-absent"),
    pytest.param(NO_LANG, [("Accept-Language", "")], False, id="9111-4.1-empty-is-not-absent"),
    pytest.param(entry(vary_names=("*",), vary_values=(None,)), [], False, id="9111-4.1-star-never-matches"),
    pytest.param(entry(), [("Accept-Language", "de")], True, id="9111-4.1-no-vary-matches-all"),
    pytest.param(
        entry(vary_names=("accept", "accept-language"), vary_values=("text/html", "en")),
        [("Accept", "text/html"), ("Accept-Language", "de")],
        False,
        id="9111-4.1-every-nominated-field-must-match",
    ),
]


@pytest.mark.parametrize(("variant", "request_pairs", "expected"), MATCHES)
def test_rfc9111_s4_1_variant_matching(
    variant: StoredResponse, request_pairs: list[tuple[str, str]], expected: bool
) -> None:
    assert variant_matches(variant, hdrs(*request_pairs)) is expected


def test_rfc9111_s4_1_newest_matching_variant_by_date_wins() -> None:
    older = entry(date=http_date(NOW - 100), body=b"older", response_time=NOW)
    newer = entry(date=http_date(NOW - 10), body=b"newer", response_time=NOW - 50)
    other = entry(vary_names=("accept",), vary_values=("image/png",), date=http_date(NOW), body=b"png")
    for order in ((older, newer, other), (other, newer, older)):
        chosen = select_variant(CachedResource("k", order), hdrs(("Accept", "text/html")))
        assert chosen is not None
        assert chosen.body == b"newer"


def test_rfc9111_s4_1_no_matching_variant_is_none() -> None:
    resource = CachedResource("k", (LANG,))
    assert select_variant(resource, hdrs(("Accept-Language", "de"))) is None


def test_with_variant_creates_replaces_and_adds() -> None:
    en = replace(LANG, vary_values=("en",), body=b"en-1")
    created = with_variant(None, "k", en, limit=16)
    assert created.key == "k"
    assert created.variants == (en,)

    en2 = replace(en, body=b"en-2", response_time=NOW + 1)
    replaced = with_variant(created, "k", en2, limit=16)
    assert [v.body for v in replaced.variants] == [b"en-2"]

    fr = replace(en, vary_values=("fr",), body=b"fr")
    added = with_variant(replaced, "k", fr, limit=16)
    assert [v.body for v in added.variants] == [b"en-2", b"fr"]


def test_with_variant_limit_drops_the_oldest() -> None:
    resource = None
    for i in range(4):
        variant = replace(LANG, vary_values=(f"l{i}",), body=str(i).encode(), response_time=NOW + i)
        resource = with_variant(resource, "k", variant, limit=3)
    assert resource is not None
    assert sorted(v.body for v in resource.variants) == [b"1", b"2", b"3"]
