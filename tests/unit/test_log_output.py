"""proxy.log_output: the command line's batched stderr logging and the access log's direct path.

Each case runs in a fresh interpreter, as the command line does: pytest's own
logging handlers would otherwise sit on the root logger beside ours.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

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
        log_output.install("INFO")
        assert log_output.direct_writer(logging.getLogger("proxy.access")) is log_output.direct
        for _ in range(3):
            log_access(Config(), "10.0.0.1", "GET", "/a?b=1", 200, "edge-1;hit;ttl=5", 0.0004)
        logging.getLogger("proxy.other").info("an ordinary record")
        """
    )  # logging.shutdown() flushes at exit
    lines = err.splitlines()
    assert len(lines) == 4, err
    for line in lines[:3]:
        assert re.fullmatch(
            STAMP + r' INFO proxy\.access 10\.0\.0\.1 "GET /a\?b=1" 200 "edge-1;hit;ttl=5" 0\.4ms', line
        )
    assert re.fullmatch(STAMP + " INFO proxy.other an ordinary record", lines[3])


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
        log_access(Config(), "10.0.0.1", "GET", "/", 200, "edge-1;hit", 0.001)
        assert len(seen) == 1
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
        os._exit(0)  # no flush at exit: only what was flushed already is there
        """
    )
    assert err.index("MARK") < err.index("INFO proxy.test quiet") < err.index("WARNING proxy.test loud")
