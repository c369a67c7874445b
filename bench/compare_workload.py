"""What compare.py's multi-key scenarios send: browser-like request heads, key popularity, wrk Lua.

Pure functions (no I/O), tested in tests/test_bench_scripts.py:

- ``browser_fields``: the header fields of a Chrome request for a static object (after Host), with
  or without a Cookie, in the order Chrome sends them.
- ``zipf_cdf`` / ``zipf_sequence``: Zipf-like popularity (rank k has weight 1 / k**s), sampled
  with a seeded generator, so that every server is sent the same sequence of keys.
- ``uniform_sequence``: every key equally often, in a shuffled round-robin: each pass over the keys
  is a new random permutation, so no two requests within a pass share a key.
- ``request_order``: which prepared request each request sends (key and cookie, 1-based for Lua).
- ``multi_key_script``: a wrk script that builds every request head once, in ``init``, and sends
  them in a precomputed order; per request it only advances an index.
- ``fill_script``: a wrk script whose every request names a new key (a counter in the query).
- ``round_robin_script``: the plain ``?k=0 .. keys-1`` round-robin of the one-URL ``reval-1k``.

The heads are assembled in Lua rather than with ``wrk.format``, which emits the fields of a Lua
table in hash order; browsers send a fixed order. wrk's own ``Host`` (``127.0.0.1:PORT``, the
same as Python's http.client sends during the warm-up) comes first.
"""

from __future__ import annotations

import bisect
import random

# A desktop Chrome 142 on Windows asking for an image on a page of another host of the same site.
CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)
BROWSER_FIELDS: tuple[tuple[str, str], ...] = (
    ("Connection", "keep-alive"),
    ("sec-ch-ua-platform", '"Windows"'),
    ("User-Agent", CHROME_UA),
    ("sec-ch-ua", '"Chromium";v="142", "Google Chrome";v="142", "Not_A Brand";v="99"'),
    ("sec-ch-ua-mobile", "?0"),
    ("Accept", "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"),
    ("Sec-Fetch-Site", "same-site"),
    ("Sec-Fetch-Mode", "no-cors"),
    ("Sec-Fetch-Dest", "image"),
    ("Referer", "https://www.example.com/"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9"),
)
COOKIE = (
    "_ga=GA1.1.1938475629.1764460800; _ga_X1Y2Z3=GS1.1.1764460800.3.1.1764461102.0.0.0; "
    "session=7f3c9a2e41d84b6f9e0a5c1d2b3e4f50; consent=necessary,analytics"
)
COOKIE_EVERY = 4  # every 4th request carries the Cookie: a quarter
SEQUENCE_LENGTH = 65536  # Zipf samples per script; the sequence repeats when wrk runs past it


def browser_fields(cookie: bool) -> list[tuple[str, str]]:
    """The fields after Host of a browser-like request, the Cookie (if any) last."""
    fields = list(BROWSER_FIELDS)
    if cookie:
        fields.append(("Cookie", COOKIE))
    return fields


def zipf_cdf(n: int, s: float = 1.0) -> list[float]:
    """Cumulative popularity of ranks 1..n when rank k has weight 1 / k**s (the last value is 1.0)."""
    if n < 1:
        raise ValueError("zipf_cdf needs at least one key")
    total, cdf = 0.0, []
    for k in range(1, n + 1):
        total += 1.0 / k**s
        cdf.append(total)
    return [c / total for c in cdf[:-1]] + [1.0]


def zipf_sequence(n: int, length: int, s: float = 1.0, seed: int = 15) -> list[int]:
    """``length`` keys (0 = the most popular) drawn independently with Zipf popularity."""
    cdf = zipf_cdf(n, s)
    rng = random.Random(seed)
    return [bisect.bisect_left(cdf, rng.random()) for _ in range(length)]


def uniform_sequence(n: int, passes: int, seed: int = 15, spread: int = 128) -> list[int]:
    """``passes`` shuffled passes over keys 0..n-1: every key equally often, once per pass.

    No key comes twice within ``spread`` consecutive requests (at most n // 2), also across the
    end of a pass: the keys that ended the previous pass are moved out of the start of the next
    one. With fewer requests in flight than that, no two of them share a key (no coalescing).
    """
    rng = random.Random(seed)
    gap = min(spread, n // 2)
    out: list[int] = []
    for _ in range(passes):
        keys = list(range(n))
        rng.shuffle(keys)
        recent = set(out[-gap:]) if out and gap else set()
        if recent:
            late = [k for k in keys if k in recent]
            keys = [k for k in keys if k not in recent]
            for k in late:
                keys.insert(rng.randrange(gap, len(keys) + 1), k)
        out += keys
    return out


def key_sequence(n: int, popularity: str, seed: int = 15) -> list[int]:
    """The keys requested, in order: ``uniform`` (shuffled round-robin) or ``zipf`` (s = 1)."""
    if popularity == "uniform":
        # at least COOKIE_EVERY passes, so that each key is also asked for with a Cookie
        return uniform_sequence(n, max(COOKIE_EVERY, -(-SEQUENCE_LENGTH // n)), seed)
    if popularity == "zipf":
        return zipf_sequence(n, SEQUENCE_LENGTH, 1.0, seed)
    raise ValueError(f"unknown popularity {popularity!r} (uniform or zipf)")


def request_order(keys: list[int], n: int, cookie_every: int = COOKIE_EVERY) -> list[int]:
    """1-based indices into the Lua table of prepared requests: key k without a Cookie is k + 1,
    with one n + k + 1; every ``cookie_every``-th request (0: none) carries the Cookie."""
    return [
        k + 1 + (n if cookie_every and i % cookie_every == cookie_every - 1 else 0)
        for i, k in enumerate(keys)
    ]


def lua_string(text: str) -> str:
    """A Lua string literal for ``text`` (quotes, backslashes and control characters escaped)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def head_tail(fields: list[tuple[str, str]]) -> str:
    """The request head after the Host line: the fields and the empty line that ends the head."""
    return "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"


_THREADS_LUA = """\
-- each wrk thread gets its own id (its own start in the order, its own fill keys)
local threads = {}
setup = function(thread)
    table.insert(threads, thread)
    thread:set("id", #threads - 1)
    for _, t in ipairs(threads) do
        t:set("nthreads", #threads)
    end
end
"""


def multi_key_script(
    name: str, prefix: str, n: int, popularity: str, *, browser: bool = True, seed: int = 15
) -> str:
    """A wrk script for ``n`` keys ``prefix .. 0`` .. ``prefix .. n-1`` with this popularity.

    Every request (n keys, and with ``browser`` each once more with a Cookie) is built once in
    ``init``; ``request`` returns the next one of a precomputed order. Thread t starts t/threads
    of the way into the order, so that threads do not send the same keys at the same moment.
    """
    keys = key_sequence(n, popularity, seed)
    order = request_order(keys, n, COOKIE_EVERY if browser else 0)
    plain = head_tail(browser_fields(False) if browser else [])
    with_cookie = head_tail(browser_fields(True) if browser else [])
    cookies = f"every {COOKIE_EVERY}th request with a Cookie" if browser else "no Cookie"
    lines = " ".join(str(i) for i in order)
    heads = "browser-like heads" if browser else "minimal heads"
    return f"""-- generated by bench/compare.py: {name}: {n} keys, {popularity}
-- {len(order)} requests in the order, then again; {heads}, {cookies}
local prefix, n = {lua_string(prefix)}, {n}
local plain = {lua_string(plain)}
local with_cookie = {lua_string(with_cookie)}
local order_text = "{lines}"
{_THREADS_LUA}
local reqs, order, len, pos = {{}}, {{}}, 0, 0
init = function(args)
    local host = "Host: " .. wrk.headers["Host"] .. "\\r\\n"
    for k = 0, n - 1 do
        local start = "GET " .. prefix .. k .. " HTTP/1.1\\r\\n" .. host
        reqs[k + 1] = start .. plain
        reqs[n + k + 1] = start .. with_cookie
    end
    for v in order_text:gmatch("%d+") do
        len = len + 1
        order[len] = tonumber(v)
    end
    order_text = nil
    pos = math.floor(len * (id or 0) / (nthreads or 1))
end
request = function()
    pos = pos + 1
    if pos > len then pos = 1 end
    return reqs[order[pos]]
end
"""


def fill_script(name: str, prefix: str, *, browser: bool = True) -> str:
    """A wrk script whose every request names a new key: ``prefix .. TAG .. "." .. thread .. "." .. n``.

    TAG is the script's first argument (``wrk ... -- TAG``), different for every wrk run, so
    that no run asks for a key an earlier run stored. The head is built per request (one string
    concatenation); every ``COOKIE_EVERY``-th request carries the Cookie.
    """
    plain = head_tail(browser_fields(False) if browser else [])
    with_cookie = head_tail(browser_fields(True) if browser else [])
    every = COOKIE_EVERY if browser else 0
    return f"""-- generated by bench/compare.py: {name}: every request a new key (a counter in the query)
local prefix = {lua_string(prefix)}
local plain = {lua_string(plain)}
local with_cookie = {lua_string(with_cookie)}
local every = {every}
{_THREADS_LUA}
local start, host, count = "", "", 0
init = function(args)
    local tag = args[1] or "run"
    start = "GET " .. prefix .. tag .. "." .. (id or 0) .. "."
    host = " HTTP/1.1\\r\\nHost: " .. wrk.headers["Host"] .. "\\r\\n"
end
request = function()
    count = count + 1
    if every > 0 and count % every == 0 then
        return start .. count .. host .. with_cookie
    end
    return start .. count .. host .. plain
end
"""


def round_robin_script(name: str, prefix: str, n: int) -> str:
    """A wrk script that requests ``prefix .. 0`` .. ``prefix .. n-1`` round-robin (wrk's own head)."""
    return f"""-- generated by bench/compare.py: {name}, {n} keys round-robin
local prefix, keys, n = {lua_string(prefix)}, {n}, 0
request = function()
    n = n + 1
    return wrk.format(nil, prefix .. (n % keys))
end
"""


def bench_rules(n: int) -> list[dict[str, object]]:
    """``n`` per-route rules of the kinds an API's config has, none matching the benchmarks' URLs.

    Globs and regular expressions over other paths, some with host, method or header conditions,
    key adjustments, tags, stale windows, a bypass and a rule on the response's status: what the
    edge checks for every request and that must cost a request no rule matches nothing measurable.
    """
    kinds: list[dict[str, object]] = [
        {"match": {"path": "/api/v{i}/products/*"}, "ttl": 60, "tags": ["products"]},
        {"match": {"path": "/api/v{i}/me"}, "bypass": True},
        {"match": {"path": "/shop{i}/**"}, "key": {"drop_query": ["utm_*", "fbclid"], "sort_query": True}},
        {"match": {"path_regex": "^/legacy{i}/[0-9]+$"}, "default_ttl": 30},
        {"match": {"path": "/static{i}/**"}, "stale_while_revalidate": 600, "strip_headers": ["Set-Cookie"]},
        {"match": {"path": "/v{i}/**", "hosts": ["api.example.com"]}, "ttl": 5},
        {"match": {"path": "/beta{i}/*", "headers": {"X-Beta": True}}, "bypass": True},
        {"match": {"path": "/search{i}", "methods": ["GET"]}, "key": {"keep_query": ["q", "page"]}},
        {"match": {"path": "/api/v{i}/**", "status": [404]}, "ttl": 10},
        {"match": {"path": "/feeds{i}/*.xml"}, "stale_if_error": 3600, "tags": ["feeds"]},
    ]
    rules: list[dict[str, object]] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rule: dict[str, object] = {"name": f"rule-{i}"}
        for key, value in kind.items():
            if key == "match":
                assert isinstance(value, dict)
                value = {k: v.format(i=i) if isinstance(v, str) else v for k, v in value.items()}
            rule[key] = value
        if rule.get("key") and isinstance(rule["match"], dict) and "methods" in rule["match"]:
            del rule["match"]["methods"]  # a rule that changes the key matches on the URL only
        rules.append(rule)
    return rules
