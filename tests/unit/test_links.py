"""proxy/links.py: Link field values (RFC 8288 §3) and same-host resolution of references."""

from __future__ import annotations

import pytest

from proxy.links import link_values, preload_targets, same_host_target


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (["</a.css>; rel=preload; as=style"], ["/a.css"]),
        (["</a.css>; rel=preload, </b.js>; rel=preload; as=script"], ["/a.css", "/b.js"]),
        (["</a.css>; rel=preload", "</b.js>; rel=preload"], ["/a.css", "/b.js"]),  # two lines
        (['</a.css>; rel="preload stylesheet"'], ["/a.css"]),  # a list of relation types
        (["</a.css>; REL=PreLoad"], ["/a.css"]),  # case-insensitive (§2.1.1)
        (["</a.css>;rel=preload"], ["/a.css"]),  # no OWS
        (["</a.css> ; rel = preload"], ["/a.css"]),  # BWS around "="
        (["</a,b.css>; rel=preload"], ["/a,b.css"]),  # a comma inside the target
        (['</a.css>; title="x, y; z"; rel=preload'], ["/a.css"]),  # separators inside quotes
        (['</a.css>; title="say \\"hi\\""; rel=preload'], ["/a.css"]),  # an escaped quote
        (["</a.css>; rel=stylesheet"], []),
        (["</a.css>; rel=prefetch"], []),  # another relation
        (["</a.css>; rel=preload; rel=stylesheet", "</b.css>; rel=stylesheet; rel=preload"], ["/a.css"]),
        (["</a.css>; rel=preload, </a.css>; rel=preload"], ["/a.css"]),  # once
        ([", ".join(f"</{n}.css>; rel=preload" for n in range(5000))], [f"/{n}.css" for n in range(5000)]),
        (["garbage, </a.css>; rel=preload"], ["/a.css"]),  # a bad element skipped
        (["</a.css> junk; rel=preload, </b.css>; rel=preload"], ["/b.css"]),
        (["</a.css>; =x; rel=preload, </b.css>; rel=preload"], ["/b.css"]),  # a bad parameter
        (['</a.css>; title="never closed; rel=preload'], []),
        (["</a.css"], []),  # no ">"
        ([""], []),
        ([", ,"], []),
    ],
)
def test_rfc8288_s3_preload_targets(fields: list[str], expected: list[str]) -> None:
    assert preload_targets(fields) == expected


def test_preload_targets_stop_at_the_limit() -> None:
    assert preload_targets(["</a>; rel=preload, </b>; rel=preload, </c>; rel=preload"], 2) == ["/a", "/b"]


def test_rfc8288_s3_parameters_are_lower_cased_and_unquoted() -> None:
    assert list(link_values(['<https://x.example/a>; Rel="next"; Title="A \\"b\\""; crossorigin'])) == [
        ("https://x.example/a", {"rel": "next", "title": 'A "b"', "crossorigin": ""})
    ]


@pytest.mark.parametrize(
    ("path", "reference", "expected"),
    [
        ("/page", "/a.css", "http://h.example/a.css"),
        ("/dir/page", "a.css", "http://h.example/dir/a.css"),  # relative to the request's path
        ("/dir/page", "../a.css", "http://h.example/a.css"),
        ("/page", "/a.css?v=2", "http://h.example/a.css?v=2"),
        ("/page", "http://H.EXAMPLE/a.css", "http://H.EXAMPLE/a.css"),  # same host, another spelling
        ("/page", "//h.example/a.css", "http://h.example/a.css"),
        ("/page", "http://other.example/a.css", None),  # another host
        ("/page", "//other.example/a.css", None),
        ("/page", "http://h.example:8080/a.css", None),  # another port: another authority
        ("/page", "https://h.example/a.css", None),  # another scheme: another origin
        ("/page", "ftp://h.example/a.css", None),
        ("/page", "", None),
        ("/page", None, None),
        ("/page", "http://[bad/a.css", None),  # malformed
    ],
)
def test_same_host_target(path: str, reference: str | None, expected: str | None) -> None:
    got = same_host_target("http", "h.example", path, reference)
    assert (None if got is None else str(got)) == expected
