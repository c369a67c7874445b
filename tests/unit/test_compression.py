"""proxy.compression: which responses are encoded, the variants made, their ETags, and freshening them.

Pure: no sockets, no clock; `now` is explicit.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import replace

import brotli
import pytest
from multidict import CIMultiDict

from proxy import compression, policy
from proxy.compression import Compression, derived_etag, is_derived, origin_view, refresh_derived
from proxy.config import CompressionConfig, Config, PolicyConfig
from proxy.entry import CachedResource, StoredResponse
from proxy.headers import EMPTY_DIRECTIVES
from proxy.keys import select_variant, with_variants

NOW = 1_800_000_000.0
DATE = "Fri, 15 Jan 2027 08:00:00 GMT"
BODY = b"".join(b'{"id": %d, "name": "item %d", "tags": ["a", "b"]}\n' % (i, i) for i in range(100))


def settings(**changes: object) -> Compression:
    cfg = Config(compression=replace(CompressionConfig(), **changes))  # type: ignore[arg-type]
    found = Compression.of(cfg)
    assert found is not None
    return found


def entry(fields: list[tuple[str, str]], body: bytes = BODY, status: int = 200) -> StoredResponse:
    headers = CIMultiDict([("Date", DATE), ("Cache-Control", "max-age=60"), *fields])
    plan = policy.plan_store(
        "GET", CIMultiDict(), EMPTY_DIRECTIVES, status, "", headers, NOW, NOW, PolicyConfig()
    )
    assert isinstance(plan, policy.StorePlan)
    return plan.build(body)


JSON = [("Content-Type", "application/json"), ("ETag", '"v1"')]


def test_the_codings_are_those_of_accept_encodings_this_cache_can_make() -> None:
    assert settings().codings == ("br", "gzip")
    cfg = Config(policy=replace(PolicyConfig(), accept_encodings=("zstd", "gzip")))
    found = Compression.of(cfg)
    assert found is not None and found.codings == ("gzip",)
    assert Compression.of(Config(policy=replace(PolicyConfig(), accept_encodings=("zstd",)))) is None
    assert Compression.of(Config(compression=CompressionConfig(enabled=False))) is None


CODINGS_FOR = [
    pytest.param(JSON, BODY, 200, "br", ("br", "gzip"), id="json"),
    pytest.param(
        [("Content-Type", "text/html; charset=utf-8")], BODY, 200, "identity", ("br", "gzip"), id="html"
    ),
    pytest.param(
        [("Content-Type", "application/ld+json")], BODY, 200, "gzip", ("br", "gzip"), id="plus-json"
    ),
    pytest.param([("Content-Type", "image/png")], BODY, 200, "br", (), id="not-a-compressible-type"),
    pytest.param([], BODY, 200, "br", (), id="no-content-type"),
    pytest.param(JSON, BODY[:1023], 200, "br", (), id="below-min-size"),
    pytest.param(JSON, BODY, 404, "br", (), id="not-200"),
    pytest.param([*JSON, ("Content-Encoding", "gzip")], BODY, 200, "gzip", (), id="origin-compressed"),
    pytest.param([*JSON, ("Content-Encoding", "identity")], BODY, 200, "gzip", (), id="origin-said-identity"),
    pytest.param(
        [("Content-Type", "text/plain"), ("Cache-Control", "no-transform")],
        BODY,
        200,
        "br",
        (),
        id="no-transform",
    ),
    pytest.param(JSON, BODY, 200, "zstd", (), id="asked-for-a-coding-this-cache-cannot-make"),
]


@pytest.mark.parametrize(("fields", "body", "status", "asked", "expected"), CODINGS_FOR)
def test_what_is_compressed(
    fields: list[tuple[str, str]], body: bytes, status: int, asked: str, expected: tuple[str, ...]
) -> None:
    assert settings().codings_for(entry(fields, body, status), asked) == expected


def test_variants_decompress_to_the_identity_bytes() -> None:
    identity = entry(JSON)
    made = compression.variants(identity, settings().encode(identity.body, ("br", "gzip")))
    assert [v.vary_values for v in made] == [("identity",), ("br",), ("gzip",)]
    plain, br, gz = made
    assert plain.body == BODY and brotli.decompress(br.body) == BODY and gzip.decompress(gz.body) == BODY
    assert len(br.body) < len(BODY) and len(gz.body) < len(BODY)
    for v in made:
        assert v.vary_names == ("accept-encoding",)
        assert ("Vary", "Accept-Encoding") in list(v.headers)
        assert v.freshness_lifetime == 60 and v.response_time == NOW
    assert [v for n, v in br.headers if n == "Content-Encoding"] == ["br"]
    assert not any(n == "Content-Encoding" for n, _ in plain.headers)
    assert (plain.etag, br.etag, gz.etag) == ('"v1"', '"v1-br"', '"v1-gzip"')
    assert [v for n, v in gz.headers if n == "ETag"] == ['"v1-gzip"']


def test_gzip_is_the_same_bytes_every_time() -> None:
    assert compression.encode(BODY, ("gzip",)) == compression.encode(BODY, ("gzip",))


def test_an_encoding_no_smaller_keeps_the_response_as_it_came() -> None:
    identity = entry(JSON, body=random.Random(7).randbytes(4096))  # incompressible
    made = compression.variants(identity, compression.encode(identity.body, ("br", "gzip")))
    assert made == (identity,)


def test_the_origins_own_vary_is_kept() -> None:
    identity = entry([*JSON, ("Vary", "Accept-Language")])
    identity = replace(identity, vary_names=("accept-language",), vary_values=("en",))
    made = compression.variants(identity, compression.encode(BODY, ("gzip",)))
    assert [(v.vary_names, v.vary_values) for v in made] == [
        (("accept-encoding", "accept-language"), ("identity", "en")),
        (("accept-encoding", "accept-language"), ("gzip", "en")),
    ]


@pytest.mark.parametrize(
    ("etag", "coding", "expected"),
    [
        ('"abc"', "gzip", '"abc-gzip"'),
        ('W/"abc"', "br", 'W/"abc-br"'),
        (' "abc" ', "br", '"abc-br"'),
        ('""', "gzip", '"-gzip"'),
        ("abc", "gzip", "abc-gzip"),  # not a valid tag: changed all the same, never shared
        (None, "gzip", None),
    ],
)
def test_rfc9110_8_8_3_an_encoding_has_its_own_entity_tag(
    etag: str | None, coding: str, expected: str | None
) -> None:
    assert derived_etag(etag, coding) == expected


def test_selecting_by_the_reduced_accept_encoding() -> None:
    identity = entry(JSON)
    made = compression.variants(identity, compression.encode(BODY, ("br", "gzip")))
    resource = with_variants(None, "k", made, 16)
    for value in ("identity", "br", "gzip"):
        found = select_variant(resource, CIMultiDict([("Accept-Encoding", value)]))
        assert found is not None and found.vary_values == (value,)


# ----------------------------------------------------------------- revalidation and freshening


def three() -> tuple[StoredResponse, ...]:
    identity = entry([*JSON, ("Cache-Control", "max-age=60")])
    return compression.variants(identity, compression.encode(BODY, ("br", "gzip")))


def test_derived_variants_are_recognised() -> None:
    plain, br, gz = three()
    assert is_derived(br, plain) and is_derived(gz, plain)
    assert not is_derived(plain, br) and not is_derived(br, gz) and not is_derived(plain, plain)
    # Another response's gzip (the origin's own, or fetched at another time) is not derived.
    assert not is_derived(replace(gz, response_time=NOW + 1), plain)
    assert not is_derived(replace(gz, etag='"other"'), plain)


def test_the_origin_is_asked_about_the_identity_variant() -> None:
    plain, br, gz = three()
    base, originals = origin_view(gz, (plain, br, gz))
    assert base is plain and originals == (plain,)
    assert policy.conditional_headers(base, originals)["If-None-Match"] == '"v1"'
    # Alone (its identity evicted), a derived variant asks with its own tag: the origin answers 200.
    assert origin_view(gz, (br, gz)) == (gz, (br, gz))


def test_a_304_for_the_identity_variant_freshens_its_encodings() -> None:
    stored = three()
    plain, br, gz = stored
    later = NOW + 120
    not_modified = CIMultiDict([("ETag", '"v1"'), ("Cache-Control", "max-age=300")])
    sent = policy.conditional_headers(*origin_view(gz, stored))
    selected = policy.select_for_update(not_modified, gz, stored, sent)
    assert selected == [plain]
    updated = {}
    for old in selected:
        plan = policy.freshen(old, not_modified, CIMultiDict(), later, later, PolicyConfig())
        assert isinstance(plan, policy.StorePlan)
        updated[id(old)] = plan.template
    updated = refresh_derived(stored, updated)
    assert set(updated) == {id(plain), id(br), id(gz)}
    fresh = updated[id(gz)]
    assert fresh.freshness_lifetime == 300 and fresh.response_time == later
    assert fresh.body == gz.body and fresh.etag == '"v1-gzip"' and fresh.vary_values == ("gzip",)
    assert policy.remaining_ttl(fresh, later) > 0
    assert is_derived(fresh, updated[id(plain)])


def test_a_304_without_validators_answers_the_one_tag_sent() -> None:
    stored = three()
    plain, _, gz = stored
    sent = policy.conditional_headers(*origin_view(gz, stored))
    assert policy.select_for_update(CIMultiDict(), gz, stored, sent) == [plain]


def test_resource_with_encodings_fits_max_variants() -> None:
    made = three()
    resource = with_variants(CachedResource("k", made), "k", made, 16)
    assert len(resource.variants) == 3  # replaced, not added again
