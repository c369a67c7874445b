"""proxy/readiness.py's rule: not ready until every check passed once, then degraded, not failed.

The checks are stand-ins (no socket): what is under test is how their results make the answer.
"""

from __future__ import annotations

from proxy.config import OriginConfig
from proxy.readiness import CACHE_SECONDS, Check, Readiness


class Checks:
    """A Readiness whose origin check answers what the test says, on a clock the test moves."""

    def __init__(self, url: str = "http://origin.test", strict: bool = False) -> None:
        self.now = 0.0
        self.error: dict[str, str | None] = {"origin": None}
        self.readiness = Readiness(OriginConfig(url=url), strict, monotonic=lambda: self.now)
        self.readiness.add("origin", self._check("origin"), url)

    def _check(self, name: str) -> Check:
        async def check() -> str | None:
            return self.error[name]

        return check

    def add(self, name: str, target: str) -> None:
        self.error[name] = None
        self.readiness.add(name, self._check(name), target)

    async def status(self) -> str:
        self.now += CACHE_SECONDS
        report = await self.readiness.report()
        assert report["ready"] == (report["status"] != "not ready")
        return str(report["status"])


async def test_not_ready_until_every_check_passed_once_then_degraded() -> None:
    c = Checks()
    c.add("redis", "redis://r.test")
    c.error["redis"] = "redis unreachable"
    assert await c.status() == "not ready"  # the origin passed, Redis never has
    c.error["redis"] = None
    assert await c.status() == "ready"
    c.error["origin"] = c.error["redis"] = "down"
    assert await c.status() == "degraded"
    assert (await c.readiness.report())["degraded"] == ["origin", "redis"]
    c.error["origin"] = c.error["redis"] = None
    assert await c.status() == "ready"


async def test_strict_fails_whenever_a_check_fails() -> None:
    c = Checks(strict=True)
    assert await c.status() == "ready"
    c.error["origin"] = "refused"
    assert await c.status() == "not ready"


async def test_a_gate_passed_for_another_origin_does_not_count() -> None:
    """A reload that points the box at another origin: the box's gates name the old one."""
    told: list[list[str]] = []
    old = Checks("http://old.test")
    old.readiness.on_first_pass = told.append
    assert await old.status() == "ready"
    assert told == [["origin http://old.test"]]
    assert await old.status() == "ready" and len(told) == 1  # told once, not on every pass

    new = Checks("http://new.test")
    new.readiness.passed = old.readiness.passed  # the box's set, as proxy/worker.py shares it
    new.error["origin"] = "refused"
    assert await new.status() == "not ready"
    same = Checks("http://old.test")
    same.readiness.passed = old.readiness.passed
    same.error["origin"] = "refused"
    assert await same.status() == "degraded"
