"""TieredStorage write-behind: aset queues the L2 write; reads, deletes and shutdown respect the queue.

Blocking is done with threading.Events inside the L2 tier's set(), never with
sleeps; drain() is the synchronisation point for "the queue reached disk".
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from proxy.entry import CachedResource
from proxy.storage import DiskStorage, MemoryStorage, TieredStorage, TierStats
from tests.functional.conftest import free_port

Make = Callable[..., CachedResource]
MiB = 1024 * 1024
WAIT = 5.0  # seconds any Event wait may take before the test fails


class Gate:
    """Makes an L2 set() block until released; counts and records the writes."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.writes: list[CachedResource] = []

    def pass_through(self, resource: CachedResource) -> None:
        self.writes.append(resource)
        self.entered.set()
        assert self.release.wait(WAIT), "gate never released"

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, WAIT), "no L2 write started"

    def keys_written(self) -> list[str]:
        return [r.key for r in self.writes]


class GatedDisk(DiskStorage):
    """The real disk tier, whose writes (set(), and each entry of set_many()) wait at a Gate first."""

    def __init__(self, directory: Path, gate: Gate) -> None:
        super().__init__(directory, 10 * MiB)
        self.gate = gate
        self.batches: list[list[str]] = []

    def set_many(self, resources: list[CachedResource]) -> list[bool | None]:
        self.batches.append([r.key for r in resources])
        for resource in resources:
            self.gate.pass_through(resource)
        return super().set_many(resources)


class StubTier:
    """A dict-backed Storage whose set() waits at a Gate (only for the first test)."""

    def __init__(self, gate: Gate) -> None:
        self.name = "stub"
        self.stats = TierStats()
        self.gate = gate
        self.data: dict[str, CachedResource] = {}

    def get(self, key: str) -> CachedResource | None:
        return self.data.get(key)

    def set(self, resource: CachedResource) -> bool:
        self.gate.pass_through(resource)
        self.data[resource.key] = resource
        return True

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def keys(self) -> Iterator[str]:
        return iter(list(self.data))

    def clear(self) -> None:
        self.data.clear()

    def close(self) -> None:
        pass


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.release.set()  # never leave a pool thread parked


@pytest.fixture
def gated(tmp_path: Path, gate: Gate) -> Iterator[tuple[TieredStorage, MemoryStorage, GatedDisk]]:
    l1 = MemoryStorage(MiB)
    l2 = GatedDisk(tmp_path / "l2", gate)
    t = TieredStorage(l1, l2)
    yield t, l1, l2
    gate.release.set()
    t.close()


def body(r: CachedResource | None) -> bytes:
    assert r is not None
    return r.variants[0].body


async def test_aset_returns_before_the_disk_write(gate: Gate, resource: Make) -> None:
    stub = StubTier(gate)
    t = TieredStorage(MemoryStorage(MiB), stub)
    try:
        r = resource("k")
        assert await t.aset(r) is True  # returns with the gate shut
        await gate.wait_entered()  # the drainer is now inside set(), blocked
        assert "k" not in stub.data
        gate.release.set()
        await t.drain()
        assert stub.data["k"] == r
        assert gate.keys_written() == ["k"]
    finally:
        gate.release.set()
        t.close()


async def test_full_queue_stores_nothing_and_counts_it(tmp_path: Path, gate: Gate, resource: Make) -> None:
    """The queue is bounded in bytes; a store that does not fit is made in neither tier (L1, L2 and the
    catalogue keep agreeing), and the response never waits."""
    l1 = MemoryStorage(MiB)
    l2 = GatedDisk(tmp_path / "l2", gate)
    a, b = resource("a", body=b"first"), resource("b", body=b"first")
    old_c, new_c = resource("c", body=b"old"), resource("c", body=b"new")
    t = TieredStorage(l1, l2, write_queue=a.size() + b.size())
    try:
        gate.release.set()
        assert t.set(old_c) is True  # write-through, before the queue fills
        gate.release.clear()
        # aset never yields to the loop, so the drainer has not taken "a" yet:
        # "a" and "b" fill the queue and "c" finds it full.
        assert await t.aset(a) is True
        assert await t.aset(b) is True
        assert await t.aset(new_c) is False
        assert (t.stats.write_dropped, t.write_queue.bytes) == (1, a.size() + b.size())
        assert l1.peek("c") == old_c  # both tiers keep what they had
        assert await t.aset(resource("a", body=b"again")) is True  # a queued key is replaced in place
        assert t.stats.write_dropped == 1
        gate.release.set()
        await t.drain()
        assert t.write_queue.bytes == 0
        assert sorted(l2.keys()) == ["a", "b", "c"]
        assert gate.keys_written() == ["c", "a", "b"]
        assert body(l2.get("a")) == b"again" and body(l2.get("c")) == b"old"
        assert await t.aset(new_c) is True  # room again
        await t.drain()
        assert body(l2.get("c")) == b"new"
        # An empty queue takes a value bigger than its bound; without L1 a drop makes aset False.
        only_l2 = TieredStorage(None, DiskStorage(tmp_path / "only", 10 * MiB), write_queue=1)
        try:
            assert await only_l2.aset(resource("x")) is True
            assert await only_l2.aset(resource("y")) is False
            assert (only_l2.stats.write_dropped, only_l2.stats.rejected) == (1, 1)
            await only_l2.drain()
            assert list(only_l2.keys()) == ["x"]
        finally:
            only_l2.close()
    finally:
        gate.release.set()
        t.close()


async def test_queued_writes_go_to_disk_in_batches(tmp_path: Path, gate: Gate, resource: Make) -> None:
    """While one batch is written the queue fills; the next batch takes up to write_batch entries at once."""
    l2 = GatedDisk(tmp_path / "l2", gate)
    t = TieredStorage(MemoryStorage(MiB), l2, write_batch=4)
    try:
        await t.aset(resource("first"))
        await gate.wait_entered()  # the drainer is inside the first batch
        for i in range(10):
            await t.aset(resource(f"k{i}"))
        gate.release.set()
        await t.drain()
        assert l2.batches == [
            ["first"],
            ["k0", "k1", "k2", "k3"],
            ["k4", "k5", "k6", "k7"],
            ["k8", "k9"],
        ]
        assert t.write_queue.batches == 4
        assert sorted(l2.keys()) == sorted(["first", *(f"k{i}" for i in range(10))])
    finally:
        gate.release.set()
        t.close()


async def test_latest_queued_value_wins(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, _, l2 = gated
    await t.aset(resource("busy"))
    await gate.wait_entered()  # the drainer is stuck on "busy"; "k" stays queued
    await t.aset(resource("k", body=b"v1"))
    await t.aset(resource("k", body=b"v2"))
    assert body((await t.aget("k"))[0]) == b"v2"
    gate.release.set()
    await t.drain()
    assert gate.keys_written() == ["busy", "k"]  # one disk write for k...
    assert body(l2.get("k")) == b"v2"  # ...with the newest value


async def test_read_your_writes_without_l1(tmp_path: Path, gate: Gate, resource: Make) -> None:
    l2 = GatedDisk(tmp_path / "l2", gate)
    gate.release.set()
    l2.set(resource("k", body=b"old"))
    gate.release.clear()
    t = TieredStorage(None, l2)
    try:
        new = resource("k", body=b"new")
        assert await t.aset(new) is True
        assert await t.aget("k") == (new, "l2")  # queued, not yet started
        await gate.wait_entered()
        assert await t.aget("k") == (new, "l2")  # being written: L2 may still hold "old"
        assert t.get("k") == new  # the synchronous read agrees
        assert list(t.keys()) == ["k"]
        gate.release.set()
        await t.drain()
        assert await t.aget("k") == (new, "l2")  # now from disk
        assert l2.get("k") == new
    finally:
        gate.release.set()
        t.close()


async def test_adelete_withdraws_a_queued_write(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, l1, l2 = gated
    await t.aset(resource("busy"))
    await gate.wait_entered()
    await t.aset(resource("k"))  # queued behind "busy"
    delete = asyncio.create_task(t.adelete("k"))
    gate.release.set()
    assert await delete is True  # the queue had it
    await t.drain()
    assert "k" not in gate.keys_written()
    assert l2.get("k") is None and l1.peek("k") is None
    assert await t.aget("k") == (None, None)


async def test_adelete_waits_for_a_write_in_progress(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, _, l2 = gated
    await t.aset(resource("k"))
    await gate.wait_entered()  # the write of "k" has started and holds the L2 lock
    delete = asyncio.create_task(t.adelete("k"))
    await asyncio.sleep(0)  # one loop turn: adelete withdraws the key and submits its delete
    assert await t.aget("k") == (None, None)  # the withdrawn write is not served
    gate.release.set()
    assert await delete is True  # ran after the write finished, so it removed it
    await t.drain()
    assert l2.get("k") is None


async def test_clear_withdraws_queued_writes(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, _, l2 = gated
    await t.aset(resource("busy"))
    await gate.wait_entered()
    await t.aset(resource("k"))
    gate.release.set()  # clear() takes the L2 lock: the write of "busy" must be able to finish
    t.clear()
    await t.drain()
    assert gate.keys_written() == ["busy"]
    assert list(l2.keys()) == [] and list(t.keys()) == []


async def test_sync_set_replaces_a_queued_write(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, _, l2 = gated
    gate.release.set()
    await t.aset(resource("k", body=b"queued"))  # the drainer has not run yet
    assert t.set(resource("k", body=b"direct")) is True  # write-through
    await t.drain()
    assert [body(r) for r in gate.writes] == [b"direct"]
    assert body(l2.get("k")) == b"direct"


async def test_read_in_flight_does_not_promote_over_a_queued_write(tmp_path: Path, resource: Make) -> None:
    started = threading.Event()
    release = threading.Event()

    class SlowReads(DiskStorage):
        def get(self, key: str) -> CachedResource | None:
            found = super().get(key)
            started.set()
            release.wait(WAIT)
            return found

    l1 = MemoryStorage(MiB)
    t = TieredStorage(l1, SlowReads(tmp_path / "l2", 10 * MiB), loop_read_max=0)
    try:
        old, new = resource("k", body=b"old"), resource("k", body=b"new")
        t.l2.set(old)  # type: ignore[union-attr]
        read = asyncio.create_task(t.aget("k"))
        assert await asyncio.to_thread(started.wait, WAIT)
        await t.aset(new)  # L1 and the queue get "new" while the read holds "old"
        release.set()
        assert await read == (old, "l2")  # the read began first
        assert l1.peek("k") == new  # ...but "old" did not overwrite L1
        await t.drain()
        l1.clear()
        assert await t.aget("k") == (new, "l2")
    finally:
        release.set()
        t.close()


def test_close_writes_what_is_still_queued(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, _, l2 = gated

    async def queue_two() -> None:
        await t.aset(resource("a"))
        await t.aset(resource("b"))

    # When the loop ends, asyncio.run cancels the drainer: "a" is stuck at the
    # gate in a pool thread (or was never started), "b" is still queued.
    asyncio.run(queue_two())
    gate.release.set()
    assert "b" not in l2
    t.close()  # no loop running: joins the pool, then writes what is left synchronously
    assert sorted(l2.keys()) == ["a", "b"]
    assert sorted(gate.keys_written()) == ["a", "b"]  # each once


async def test_drain_survives_a_cancelled_drainer(
    gated: tuple[TieredStorage, MemoryStorage, GatedDisk], gate: Gate, resource: Make
) -> None:
    t, _, l2 = gated
    await t.aset(resource("a"))
    await gate.wait_entered()  # the batch of "a" has started in a pool thread
    await t.aset(resource("b"))  # queued behind it
    drainer = t._writes._task
    assert drainer is not None
    drainer.cancel()  # as when the loop shuts down under it
    with pytest.raises(asyncio.CancelledError):
        await drainer
    gate.release.set()
    await t.drain()  # starts a new drainer for what is left
    assert sorted(gate.keys_written()) == ["a", "b"]  # each written once
    assert sorted(l2.keys()) == ["a", "b"]


# -- the real processes: SIGTERM drains the queue ------------------------------------

REPO = Path(__file__).resolve().parents[2]
OBJECTS = 50
DEADLINE = 20.0


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINICDN_")}
    env["PYTHONUNBUFFERED"] = "1"
    with out.open("wb") as f:
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


async def _until(
    what: str, check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        if await check():
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what} (exit {proc.poll()}):\n{log.read_text(errors='replace')}")
        await asyncio.sleep(0.05)  # polling readiness only, no logic depends on it


async def test_sigterm_drains_the_queue_to_disk(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    origin_log, proxy_log = tmp_path / "origin.log", tmp_path / "proxy.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        origin = _spawn([sys.executable, "-m", "origin_stub", "--listen", "127.0.0.1:0"], origin_log)
        procs.append(origin)
        origin_url = ""

        async def origin_ready() -> bool:
            nonlocal origin_url
            found = re.search(r"origin stub listening on (http://\S+)", origin_log.read_text())
            origin_url = found.group(1) if found else ""
            return found is not None

        await _until("origin stub did not start", origin_ready, origin, origin_log)

        port = free_port()
        proxy_args = ["--listen", f"127.0.0.1:{port}", "--origin", origin_url, "--cache-dir", str(cache_dir)]
        proxy_args += ["--admin-listen", f"127.0.0.1:{free_port()}"]  # not the fixed default
        proxy = _spawn([sys.executable, "-m", "proxy", *proxy_args], proxy_log)
        procs.append(proxy)

        async def proxy_ready() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await _until("proxy did not start", proxy_ready, proxy, proxy_log)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as http:

            async def fetch(i: int) -> None:
                url = f"http://127.0.0.1:{port}/bytes/20000?i={i}"
                async with http.get(url, headers={"Host": "cdn.example"}) as resp:
                    assert resp.status == 200, await resp.text()
                    assert len(await resp.read()) == 20000

            # All at once, so that writes are still queued when the last response arrives.
            await asyncio.gather(*(fetch(i) for i in range(OBJECTS)))
        proxy.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proxy.wait, DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"proxy did not exit after SIGTERM:\n{proxy_log.read_text(errors='replace')}")
        assert code == 0, proxy_log.read_text(errors="replace")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=DEADLINE)

    disk = DiskStorage(cache_dir, 1024 * MiB)
    try:
        keys = list(disk.keys())
        assert len(keys) == OBJECTS, (keys, proxy_log.read_text(errors="replace"))
        for i in range(OBJECTS):
            assert sum(k.endswith(f"/bytes/20000?i={i}") for k in keys) == 1, (i, keys)
        assert all(body(disk.get(k)) and len(body(disk.get(k))) == 20000 for k in keys)
    finally:
        disk.close()
