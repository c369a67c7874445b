"""proxy/wire.py's HeaderBlock: the stored fields as bytes, read back as (name, value) pairs."""

from __future__ import annotations

import random

import pytest

from proxy.wire import HeaderBlock


def _line_by_line(wire: bytes) -> list[tuple[str, str]]:
    """The reading HeaderBlock promises: CRLF ends a line, the first ": " ends the name."""
    pairs = []
    for line in wire.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b": ")
        pairs.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
    return pairs


def _block(wire: bytes) -> HeaderBlock:
    block = HeaderBlock.__new__(HeaderBlock)
    block.wire = wire
    return block


@pytest.mark.parametrize(
    "pairs",
    [
        [],
        [("ETag", '"v1"'), ("Cache-Control", "max-age=60")],
        [("X-Empty", ""), ("X-Colon", "a: b: c"), ("X-Spaces", "  a  ")],
        [("X-Latin", "caf\udce9"), ("X-Utf8", "café")],  # a byte that is not UTF-8, and UTF-8
    ],
)
def test_pairs_round_trip(pairs: list[tuple[str, str]]) -> None:
    block = HeaderBlock(pairs)
    assert list(block) == pairs == block.pairs()
    assert len(block) == len(pairs)


def test_lines_without_a_colon_space_read_as_the_line_by_line_split() -> None:
    # Only a block built from odd pairs has them; the fast split must not shift the fields.
    wire = b"A: 1\r\nno-separator\r\nB:x\r\nC: lone\rcarriage\r\nD: \xff\r\n"
    assert _block(wire).pairs() == _line_by_line(wire)
    assert _block(wire).pairs()[1] == ("no-separator", "")


def test_random_blocks_read_as_the_line_by_line_split() -> None:
    rng = random.Random(9111)
    alphabet = [b"a", b"B", b":", b" ", b": ", b"\r", b"\n", b"\xc3\xa9", b"\xff", b"-", b"\t"]
    for _ in range(2000):
        lines = [b"".join(rng.choices(alphabet, k=rng.randint(0, 8))) for _ in range(rng.randint(0, 5))]
        wire = b"".join(line + b"\r\n" for line in lines)
        assert _block(wire).pairs() == _line_by_line(wire), wire
