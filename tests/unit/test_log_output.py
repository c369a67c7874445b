"""proxy.log_output: the command line's batched stderr logging and the access log's direct path.

Each case runs in a fresh interpreter, as the command line does: pytest's own
logging handlers would otherwise sit on the root logger beside ours.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap

from proxy import log_output
from proxy.log_output import ACCESS_FIELDS, JsonFormatter

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def run(code: str) -> str:
    prelude = "import logging\nfrom proxy import log_output\nfrom proxy.config import Config\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stderr


def test_access_lines_skip_records_but_read_like_them() -> None:
    err = run(
        """
        from proxy.log_output import log_access
        from proxy.messages import ClientRequest
        from proxy.observe import HIT_L1
        log_output.install("INFO")
        assert log_output.direct_writer(logging.getLogger("proxy.access")) is log_output.direct
        req = ClientRequest.of(
            "GET", "/a?b=1", [("Host", "cdn.example"), ("User-Agent", "curl/8"), ("X-Request-Id", "r-1")],
            remote="10.0.0.1",
        )
        for _ in range(3):
            log_access(Config(), req, 200, b'edge-1;hit;ttl=5;detail="l1"', HIT_L1, 1234, 0.0004, None)
        logging.getLogger("proxy.other").info("an ordinary record")
        """
    )  # logging.shutdown() flushes at exit
    lines = err.splitlines()
    assert len(lines) == 4, err
    for line in lines[:3]:
        assert re.fullmatch(
            STAMP + r' INFO proxy\.access 10\.0\.0\.1 "GET /a\?b=1" 200 1234 hit l1 0\.400ms origin=- '
            r'"edge-1;hit;ttl=5;detail=\\"l1\\"" host="cdn\.example" ua="curl/8" id="r-1"',
            line,
        ), line
    assert re.fullmatch(STAMP + " INFO proxy.other an ordinary record", lines[3])


# One text access line: every free-text value in double quotes, with \" and \\ inside.
QUOTED = r'"((?:[^"\\]|\\.)*)"'
TEXT_LINE = re.compile(
    STAMP
    + r" INFO proxy\.access (\S+) "
    + QUOTED
    + r" (\d+) (\d+) (\w+) (\w+) (\S+)ms origin=(\S+) "
    + QUOTED
    + " host="
    + QUOTED
    + " ua="
    + QUOTED
    + " id="
    + QUOTED
)


def unquote(text: str) -> str:
    return re.sub(r"\\(x[0-9a-f]{2}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 3 else m[1], text)


def test_text_lines_quote_whatever_a_client_sends() -> None:
    """Quotes, backslashes, control characters and bytes that are not UTF-8 cannot split or fake a field."""
    err = run(
        r"""
        from proxy.log_output import log_access
        from proxy.messages import ClientRequest
        from proxy.observe import MISS
        log_output.install("INFO")
        req = ClientRequest.read(
            "GET", "/a", "q=\"x", [(b"Host", b"h\"ost"), (b"user-agent", b'evil" ua="x\\ \x01 \xff')],
            "10.0.0.2", False,
        )
        log_access(Config(), req, 502, b'edge-1;fwd=uri-miss;detail="origin timed out"', MISS, 10, 0.25, 0.2)
        """
    )
    [line] = err.splitlines()
    match = TEXT_LINE.fullmatch(line)
    assert match is not None, line
    remote, request, status, size, result, tier, total, origin, cache, host, ua, rid = match.groups()
    assert (remote, unquote(request), status, size, result, tier) == (
        "10.0.0.2",
        'GET /a?q="x',
        "502",
        "10",
        "miss",
        "origin",
    )
    assert (total, origin) == ("250.000", "200.000ms")
    assert unquote(cache) == 'edge-1;fwd=uri-miss;detail="origin timed out"'
    assert unquote(host) == 'h"ost'
    assert unquote(ua) == 'evil" ua="x\\ \x01 \xff'  # the non-UTF-8 byte as \xff
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", rid)  # made up here: the client sent none


def test_json_mode_writes_one_object_per_line_for_every_record() -> None:
    err = run(
        """
        from proxy.log_output import log_access
        from proxy.messages import ClientRequest
        from proxy.observe import HIT_L2
        cfg = Config(log=__import__("dataclasses").replace(Config().log, format="json"))
        log_output.install("INFO", "json", worker=3)
        req = ClientRequest.of("HEAD", "/b", [("Host", "cdn.example"), ("User-Agent", 'a "quoted"\\nua')])
        log_access(cfg, req, 304, b'edge-1;hit;ttl=9;detail="l2"', HIT_L2, 200, 0.001, None)
        logging.getLogger("proxy.purge").info("purge hard url /a by admin API 127.0.0.1: 1 keys (epoch 2)")
        logging.getLogger("proxy.origin").warning("origin refused the connection")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("proxy.front").exception("error answering GET /\\nsecond line")
        import warnings
        warnings.warn("a Python warning")
        """
    )
    lines = err.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 5, err
    for record in records:
        assert {"timestamp", "level", "logger", "worker", "pid", "message"} <= set(record)
        assert record["worker"] == 3
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["timestamp"])
    access, purge, warning, error, python_warning = records
    assert access["logger"] == "proxy.access" and access["level"] == "INFO"
    assert {k: access[k] for k in ACCESS_FIELDS} == {
        "remote": None,
        "method": "HEAD",
        "host": "cdn.example",
        "target": "/b",
        "status": 304,
        "bytes": 200,
        "cache": 'edge-1;hit;ttl=9;detail="l2"',
        "result": "hit",
        "tier": "l2",
        "total_ms": 1.0,
        "origin_ms": None,
        "user_agent": 'a "quoted"\nua',
        "request_id": access["request_id"],
    }
    assert purge["message"].startswith("purge hard url /a by admin API")
    assert warning["level"] == "WARNING" and warning["logger"] == "proxy.origin"
    assert error["level"] == "ERROR" and "ZeroDivisionError" in error["exception"]
    assert error["message"] == "error answering GET /\nsecond line"
    assert python_warning["logger"] == "py.warnings" and "a Python warning" in python_warning["message"]


def test_a_logger_with_its_own_handler_gets_records() -> None:
    err = run(
        """
        from proxy.log_output import log_access
        log_output.install("INFO")
        seen = []
        handler = logging.Handler()
        handler.emit = seen.append
        logging.getLogger("proxy.access").addHandler(handler)
        assert log_output.direct_writer(logging.getLogger("proxy.access")) is None
        from proxy.messages import ClientRequest
        log_access(Config(), ClientRequest.of("GET", "/"), 200, b"edge-1;hit", 0, 9, 0.001, None)
        assert len(seen) == 1
        assert seen[0].access_fields["result"] == "hit" and seen[0].access_fields["bytes"] == 9
        """
    )
    assert "proxy.access" in err  # and it propagated to the root's handler as a record too


def test_lines_wait_in_the_buffer_until_a_flush_or_a_warning() -> None:
    err = run(
        """
        import os, sys
        log_output.install("INFO")
        log_output.direct.interval = 3600.0
        log_output.direct.flush()
        logging.getLogger("proxy.test").info("quiet")
        os.write(2, b"MARK\\n")  # straight to the descriptor: overtakes the buffered line
        logging.getLogger("proxy.test").warning("loud")
        log_output.direct.stream.buffer.raw.drain(5)  # the writer thread has written what it was given
        os._exit(0)  # no flush at exit: only what was flushed already is there
        """
    )
    assert err.index("MARK") < err.index("INFO proxy.test quiet") < err.index("WARNING proxy.test loud")


def test_json_lines_carry_bytes_that_were_not_utf8_as_text_not_as_lone_surrogates() -> None:
    """A User-Agent (or X-Request-Id) byte that is not UTF-8 is held as a lone surrogate;
    json.dumps wrote it as "\\udcff": JSON, but no Unicode, and strict parsers (serde_json, as in
    Vector) refuse the whole line. It is written as the text lines write it, \\xff."""
    record = logging.LogRecord(
        "proxy.origin", logging.WARNING, __file__, 1, "GET %s: refused", ("/a\udcff",), None
    )
    record.access_fields = {"user_agent": "curl\udcff", "request_id": "id\udcfe", "host": "h", "target": "/"}
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    for name in ("user_agent", "request_id", "message"):
        parsed[name].encode("utf-8")  # raises on a lone surrogate
    assert parsed["user_agent"] == "curl\\xff" and parsed["request_id"] == "id\\xfe"
    assert parsed["message"] == "GET /a\\xff: refused"
    assert "\\ud" not in line


def test_printable_and_printable_json_escape_what_reorders_or_splits_a_terminal_line() -> None:
    """`minicdn inspect` / `stats` print a client's URL and an origin's tags: C0 / C1 controls, the
    bidi controls (U+202E reorders the rest of the line), U+2028 and a byte that was not UTF-8 are
    escaped; a backslash is doubled so an escape reads as one. --json stays the same JSON value."""
    text = "a\u202eb\u2066c\x85d\u2028e\x07f\udcffg\\h"
    assert log_output.printable(text) == "a\\u202eb\\u2066c\\x85d\\u2028e\\x07f\\xffg\\\\h"
    assert log_output.printable("plain/url?x=1") == "plain/url?x=1"
    shown = log_output.printable_json(json.dumps({"tag": text}, ensure_ascii=False))
    assert json.loads(shown) == {"tag": text}
    assert not any(ch in shown for ch in "\u202e\u2066\x85\u2028\x07\udcff")
