"""One box, one cache: `python -m proxy --workers N` as real processes (a supervisor and N workers).

The supervisor binds the port once (a second node on it fails to start), the workers inherit it
and act as one cache: a burst of requests for one cold or stale key reaches the origin once per
box, a worker killed while it fetches leaves nobody hanging, /stats counts every request once,
a purge reaches every worker, and SIGHUP replaces the workers under load without a failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from bench.procs import children
from proxy import supervisor as supervisor_module
from proxy.config import AdminConfig, Config
from proxy.node import open_node
from proxy.supervisor import StartError, Supervisor
from tests.functional.conftest import Origin, free_port, make_config
from tests.functional.test_cli import MINICDN, Process, Spawn, run_to_exit, spawn, wait_listening

__all__ = ["spawn"]

SLOW_MS = 1500


def workers_cmd(n: int, port: int, admin: int, origin: Origin, tmp_path: Path, *extra: str) -> list[str]:
    """`python -m proxy --workers n` on free loopback ports in front of the origin stub."""
    return [
        sys.executable, "-m", "proxy", "--workers", str(n),
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
        "--origin", origin.url, "--cache-dir", str(tmp_path / "cache"), *extra,
    ]  # fmt: skip


async def start(
    spawn: Spawn, n: int, origin: Origin, tmp_path: Path, *extra: str
) -> tuple[Process, int, int]:
    port, admin = free_port(), free_port()
    proc = spawn(workers_cmd(n, port, admin, origin, tmp_path, *extra), f"workers{n}")
    await wait_listening(proc, port)
    await wait_listening(proc, admin)
    await wait_ready(admin, n)
    return proc, port, admin


async def stats(admin: int) -> dict[str, object]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{admin}/stats") as r:
        assert r.status == 200, await r.text()
        data = await r.json()
        assert isinstance(data, dict)
        return data


async def wait_ready(admin: int, workers: int, timeout: float = 20.0) -> None:
    """Until /stats shows `workers` live workers (all of them ready to serve)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await stats(admin)).get("workers") == workers:
                return
        except (aiohttp.ClientError, AssertionError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"not {workers} workers after {timeout} s")
        await asyncio.sleep(0.1)


async def wait_generation(admin: int, generation: int, timeout: float = 30.0) -> None:
    """Until every live worker is of `generation` (the ones a reload replaced have exited)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = (await stats(admin)).get("per_worker")
        if isinstance(rows, list) and rows and all(r.get("generation") == generation for r in rows):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"workers of other generations still run: {rows}")
        await asyncio.sleep(0.1)


async def fresh_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """One request on a new connection (the kernel spreads new connections over the workers)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url, headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("Cache-Status", "")


async def burst(url: str, n: int) -> list[tuple[int, str]]:
    """n concurrent requests, each on its own connection."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:

        async def one() -> tuple[int, str]:
            async with s.get(url) as r:
                await r.read()
                return r.status, r.headers.get("Cache-Status", "")

        return await asyncio.gather(*(one() for _ in range(n)))


def connected_to(pid: int, port: int) -> bool:
    """Whether process pid has an established TCP connection to 127.0.0.1:port (Linux /proc)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.split(":")[1], 16) == port and inode in inodes:
            return True
    return False


def origin_port(origin: Origin) -> int:
    return int(origin.url.rsplit(":", 1)[1])


# --------------------------------------------------------------------------- one fetch per box


async def test_a_burst_for_one_cold_key_reaches_the_origin_once(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    proc, port, admin = await start(spawn, 3, origin, tmp_path)
    answers = await burst(f"http://127.0.0.1:{port}/slow?ms={SLOW_MS}&max_age=600", 200)
    assert all(status == 200 for status, _ in answers), answers[:5]
    assert await origin.hits("/slow") == 1
    served = await stats(admin)
    per_worker = served["per_worker"]
    assert isinstance(per_worker, list)
    assert sum(1 for w in per_worker if w["requests"]) >= 2  # the burst did spread over the workers
    engine = served["engine"]
    assert isinstance(engine, dict) and engine["requests"] == 200
    assert engine["box_waits"] >= 1  # some worker waited for another's fetch and read L2
    assert proc.stop() == 0


async def test_a_burst_for_one_stale_key_revalidates_it_once(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    proc, port, _ = await start(spawn, 3, origin, tmp_path)
    # Stored already stale (Age beyond max-age) but within stale-while-revalidate: every request is
    # answered at once, and revalidated behind, by one worker of the box, not by each.
    path = (
        f"/respond?h=Cache-Control:max-age%3D2,stale-while-revalidate%3D600&h=Age:5&h=ETag:%22v1%22"
        f"&body=x&ms={SLOW_MS}"
    )
    status, member = await fresh_get(f"http://127.0.0.1:{port}{path}")
    assert status == 200 and "stored" in member, member
    # Each worker reads it from L2 once, so that the burst finds it everywhere.
    answers = await burst(f"http://127.0.0.1:{port}{path}", 200)
    assert all(status == 200 for status, _ in answers)
    assert all("fwd=stale" in m or "hit" in m for _, m in answers), answers[:5]
    await asyncio.sleep(SLOW_MS / 1000 + 0.5)  # the background revalidation finishes
    assert await origin.hits("/respond") == 2  # the first fetch and one revalidation
    assert proc.stop() == 0


async def test_a_worker_killed_while_it_fetches_leaves_nobody_waiting(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("fetch:\n  coalesce_timeout: 60\n")  # a wait that ran out could not pass this test
    proc, port, admin = await start(spawn, 3, origin, tmp_path, "--config", str(config))
    url = f"http://127.0.0.1:{port}/slow?ms=3000&max_age=600"
    first = asyncio.create_task(burst(url, 1))
    deadline = time.monotonic() + 10
    while await origin.hits("/slow") == 0:
        assert time.monotonic() < deadline, "the first request never reached the origin"
        await asyncio.sleep(0.02)
    workers = children(proc.popen.pid)
    [leader] = [pid for pid in workers if connected_to(pid, origin_port(origin))]
    others = asyncio.create_task(burst(url, 60))
    await asyncio.sleep(0.5)  # they are waiting for the leader now
    started = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    # Its own client loses the connection (aiohttp may retry it once, on another worker).
    await asyncio.gather(first, return_exceptions=True)
    answers = await asyncio.gather(others, return_exceptions=True)
    elapsed = time.monotonic() - started
    results = answers[0]
    if isinstance(results, BaseException):
        # Connections the kernel had given the killed worker fail; the others must be answered.
        pytest.fail(f"the burst failed: {results!r}")
    assert all(status == 200 for status, _ in results)
    assert elapsed < 10, elapsed  # fetched again at once, not after the 60 s wait
    await wait_ready(admin, 3)  # the supervisor restarted the killed worker
    assert leader not in children(proc.popen.pid)
    assert "restarting it" in proc.output()
    assert proc.stop() == 0


async def test_a_replacement_that_dies_before_it_is_ready_is_started_again(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """A replacement has no watch of its own until it is ready: the supervisor must try again, or the
    place stays empty for good (with every place empty, connections queue on the port unanswered)."""
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    before = children(proc.popen.pid)
    os.kill(before[0], signal.SIGKILL)
    # Its replacement comes 0.5 s later; killed the moment it exists, long before it has even
    # imported what it runs (a worker that crashes at start, the OOM killer on a busy box).
    deadline = time.monotonic() + 10
    while not (new := [pid for pid in children(proc.popen.pid) if pid not in before]):
        assert time.monotonic() < deadline, "no replacement was started"
        await asyncio.sleep(0.005)
    os.kill(new[0], signal.SIGKILL)
    await wait_ready(admin, 2, timeout=10)  # the next one, a second later
    assert "restarting worker 0 failed" in proc.output() or "restarting worker 1 failed" in proc.output()
    status, _ = await fresh_get(f"http://127.0.0.1:{port}/max-age/60")
    assert status == 200
    assert proc.stop() == 0


async def test_connections_for_an_empty_place_are_answered_by_the_other_workers(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """Each worker accepts on its own sockets of the SO_REUSEPORT group, and the kernel goes on
    handing a dead worker's sockets their share of new connections: while its place is empty (here
    for as long as the test runs: every replacement is killed the moment it exists, a worker that
    keeps failing at start) a live worker must accept them, or they wait unanswered for ever."""
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    seen = set(children(proc.popen.pid))
    os.kill(min(seen), signal.SIGKILL)
    done = asyncio.Event()

    async def kill_replacements() -> None:
        while not done.is_set():
            for pid in children(proc.popen.pid):
                if pid not in seen:
                    seen.add(pid)
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.005)

    killer = asyncio.create_task(kill_replacements())
    try:
        await wait_ready(admin, 1)  # the supervisor has seen it go
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        timeout = aiohttp.ClientTimeout(total=5)  # answered at once, or never
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s:

            async def one() -> int:
                async with s.get(f"http://127.0.0.1:{port}/max-age/600") as r:
                    await r.read()
                    return r.status

            # 30 connections: each lands on the empty place's socket with probability 1/2.
            statuses = await asyncio.gather(*(one() for _ in range(30)), return_exceptions=True)
    finally:
        done.set()
        await killer
    assert statuses == [200] * 30, statuses
    # The helper's log line reaches stderr within its 0.2 s flush (proxy/log_output.py), perhaps
    # after the 30 answers.
    deadline = time.monotonic() + 5
    while "accepting for worker" not in proc.output():
        assert time.monotonic() < deadline, proc.output()[-2000:]
        await asyncio.sleep(0.05)
    assert proc.stop() == 0


# --------------------------------------------------------------------------- one socket


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_second_node_on_a_taken_port_fails_to_start(
    spawn: Spawn, origin: Origin, tmp_path: Path, workers: int
) -> None:
    proc, port, _ = await start(spawn, 2, origin, tmp_path)
    args = workers_cmd(workers, port, free_port(), origin, tmp_path / "other")
    done = run_to_exit(args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port} (public): Address already in use" in done.stderr
    assert proc.popen.poll() is None  # the first node goes on
    assert proc.stop() == 0


# --------------------------------------------------------------------------- numbers for the box


async def test_stats_count_every_request_once_whichever_worker_took_it(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    for _ in range(40):
        status, _ = await fresh_get(f"http://127.0.0.1:{port}/max-age/600")
        assert status == 200
    served = await stats(admin)
    engine, per_worker = served["engine"], served["per_worker"]
    assert isinstance(engine, dict) and isinstance(per_worker, list)
    assert served["workers"] == 2 and engine["requests"] == 40
    assert sum(w["requests"] for w in per_worker) == 40
    assert engine["hits"] + engine["misses"] == 40
    done = run_to_exit([*MINICDN, "stats", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 0, done.stderr
    assert "workers  2 (the numbers below are their sum)" in done.stdout
    assert "requests 40" in done.stdout
    assert proc.stop() == 0


async def test_a_worker_that_does_not_answer_for_stats_keeps_its_numbers_in_the_box(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """The box's counters never go down while it runs: a worker that gives no snapshot in time (a
    blocked loop; here a stopped process) counts with its last one, not as nothing (a scraper would
    take the drop for a counter reset)."""
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    for _ in range(20):
        status, _ = await fresh_get(f"http://127.0.0.1:{port}/max-age/600")
        assert status == 200
    before = await stats(admin)
    per_worker = before["per_worker"]
    assert isinstance(per_worker, list)
    busiest = max(per_worker, key=lambda w: int(w["requests"]))
    os.kill(busiest["pid"], signal.SIGSTOP)
    try:
        after = await stats(admin)  # the supervisor waits 5 s for the stopped worker's snapshot
    finally:
        os.kill(busiest["pid"], signal.SIGCONT)
    engine = after["engine"]
    assert isinstance(engine, dict) and engine["requests"] == 20, after["per_worker"]
    assert after["workers"] == 2
    assert f"worker {busiest['worker']} did not answer for stats" in proc.output()
    assert proc.stop() == 0


async def test_a_purge_reaches_every_worker(spawn: Spawn, origin: Origin, tmp_path: Path) -> None:
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    url = f"http://127.0.0.1:{port}/max-age/600"
    for _ in range(20):
        await fresh_get(url)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{admin}/purge", json={"url": "/max-age/600"}) as r,
    ):
        assert r.status == 200, await r.text()
    after = [await fresh_get(url, {"Cache-Control": "only-if-cached"}) for _ in range(20)]
    assert all(status == 504 for status, _ in after), after  # no worker's L1 still serves it
    assert proc.stop() == 0


async def bodies(url: str, n: int) -> list[bytes]:
    """The bodies of n concurrent requests, each on its own connection (spread over the workers)."""
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as s:

        async def one() -> bytes:
            async with s.get(url) as r:
                assert r.status == 200
                return await r.read()

        return await asyncio.gather(*(one() for _ in range(n)))


async def test_no_worker_answers_a_request_after_a_purge_with_a_fetch_begun_before_it(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """A request that comes after a purge must not get the copy a fetch begun before it brings: in
    the fetching worker it fetches again (_purged_before_joining); in another worker it waits on the
    box's fetch lock and must not take that copy from L2 either. A soft purge (that copy is stale,
    and /slow allows no stale answer): after a hard one the fetching worker's catalogue writer
    also deletes the late copy, racing the other worker's read."""
    proc, port, admin = await start(spawn, 2, origin, tmp_path)
    path = "/slow?ms=1500&max_age=600"
    first = asyncio.create_task(bodies(f"http://127.0.0.1:{port}{path}", 1))
    deadline = time.monotonic() + 10
    while await origin.hits("/slow") == 0:
        assert time.monotonic() < deadline, "the first request never reached the origin"
        await asyncio.sleep(0.02)
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{admin}/purge", json={"url": path, "soft": True}) as r,
    ):
        assert r.status == 200, await r.text()
    # 20 connections: some land on the other worker (each with probability 1/2), while hit=1 is
    # still at the origin.
    after = await bodies(f"http://127.0.0.1:{port}{path}", 20)
    assert [body.endswith(b" hit=1\n") for body in after] == [False] * 20, after
    assert (await first)[0].endswith(b" hit=1\n")  # asked before the purge: the fetch it led
    assert proc.stop() == 0


# --------------------------------------------------------------------------- reload and drain


async def test_sighup_under_load_loses_no_request_and_applies_the_new_config(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("name: edge-a\ndrain_timeout: 5\n")
    proc, port, admin = await start(spawn, 2, origin, tmp_path, "--config", str(config))
    url = f"http://127.0.0.1:{port}/max-age/600"
    seen: list[tuple[int, str]] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                seen.append(await fresh_get(url))
            except aiohttp.ClientError as exc:
                failures.append(exc)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    # A slow request in flight while the workers are replaced: it must finish, not be cut.
    slow = asyncio.create_task(fresh_get(f"http://127.0.0.1:{port}/slow?ms=1500&max_age=0"))
    await asyncio.sleep(0.5)
    config.write_text("name: edge-b\ndrain_timeout: 5\n")
    proc.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "reloaded" not in proc.output():
        assert time.monotonic() < deadline, f"no reload:\n{proc.output()}"
        await asyncio.sleep(0.05)
    await wait_generation(admin, 2)  # the old generation drained and exited
    after = len(seen)
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    assert not failures, failures[:3]
    bad = [x for x in seen if x[0] != 200]
    assert not bad, (bad[:5], proc.output()[-3000:])
    assert (await slow)[0] == 200
    assert any("edge-a" in m for _, m in seen[:after])
    assert seen[after:] and all(m.startswith("edge-b;") for _, m in seen[after:])
    assert proc.stop() == 0


async def test_a_config_error_at_reload_keeps_the_workers_and_says_why(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("name: edge-a\n")
    proc, port, admin = await start(spawn, 2, origin, tmp_path, "--config", str(config))
    config.write_text("name: edge-a\ndrain_timeout: soon\n")
    done = run_to_exit([*MINICDN, "reload", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 1
    assert "drain_timeout" in done.stderr and "the running workers go on" in done.stderr
    status, member = await fresh_get(f"http://127.0.0.1:{port}/max-age/60")
    assert status == 200 and member.startswith("edge-a;")
    # A file that is not UTF-8 was a traceback in the supervisor: `minicdn reload` timed out.
    config.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    done = run_to_exit([*MINICDN, "reload", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 1
    assert "not UTF-8" in done.stderr and "the running workers go on" in done.stderr
    config.write_text("name: edge-c\n")
    done = run_to_exit([*MINICDN, "reload", "--admin", f"http://127.0.0.1:{admin}"])
    assert done.returncode == 0, done.stderr
    assert "reloaded" in done.stdout and "name" in done.stdout
    await wait_generation(admin, 2)
    status, member = await fresh_get(f"http://127.0.0.1:{port}/max-age/60")
    assert member.startswith("edge-c;")
    assert proc.stop() == 0


async def test_a_reload_whose_config_reading_fails_unexpectedly_is_answered() -> None:
    """Not only a ConfigError: whatever reading the config raises is the reload's answer, the
    workers untouched (it propagated, and `POST /reload` waited 120 s for an answer)."""

    def broken() -> Config:
        raise OverflowError("cannot convert float infinity to integer")

    supervisor = Supervisor(Config(), open_node, workers=1, reload_config=broken)
    ok, message = await supervisor.reload()
    assert not ok
    assert message.startswith("reload failed, the running workers go on: cannot read the config: ")
    assert "OverflowError" in message


async def test_reloads_asked_for_while_one_is_under_way_are_answered_by_one_more(
    origin: Origin, tmp_path: Path
) -> None:
    """Several reloads in quick succession (SIGHUPs, `POST /reload`: a deploy tool that signals
    once per file it writes) queued up, each starting a generation of workers after the one before,
    the latest config applied only after all of them (and every replaced generation draining at
    once). The ones asked for while a reload is under way share one more: it reads the config
    when it starts, so it sees every edit made meanwhile, and answers them all."""
    cfg = replace(
        make_config(origin.url, tmp_path / "cache"),
        listen=f"127.0.0.1:{free_port()}",
        admin=AdminConfig(enabled=False),
        drain_timeout=1.0,
    )
    reads: list[str] = []

    def reload_config() -> Config:
        reads.append(f"edge-{len(reads) + 1}")
        return replace(cfg, name=reads[-1])

    supervisor = Supervisor(cfg, open_node, workers=1, reload_config=reload_config)
    supervisor.bind()
    running = asyncio.create_task(supervisor.run())  # its SIGHUP handler, as `minicdn serve` has it
    try:
        deadline = time.monotonic() + 20
        while not (supervisor.workers and all(w.link.ready.is_set() for w in supervisor.workers)):
            assert time.monotonic() < deadline and not running.done(), "the first worker was never ready"
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGHUP)
        while not reads:  # the first reload is under way: it has read the config
            assert time.monotonic() < deadline, "SIGHUP started no reload"
            await asyncio.sleep(0.01)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGHUP)
        answers = await asyncio.gather(*(supervisor.reload() for _ in range(3)))
        assert reads == ["edge-1", "edge-2"], reads
        assert supervisor.generation == 3 and supervisor.cfg.name == "edge-2"
        assert all(ok and "(generation 3)" in message for ok, message in answers), answers
    finally:
        supervisor.stopping.set()
        await running
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def test_after_a_reload_whose_workers_fail_to_start_a_dead_worker_is_still_restarted(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """A reload whose new workers do not get ready keeps the running ones: they are still the box's
    workers, restarted when they die (the failed reload had taken the generation number)."""
    config = tmp_path / "edge.yaml"
    config.write_text("name: edge-a\n")
    proc, _, admin = await start(spawn, 2, origin, tmp_path, "--config", str(config))
    running = set(children(proc.popen.pid))
    proc.popen.send_signal(signal.SIGHUP)
    # Every new worker is killed the moment it exists (a new release that crashes at start).
    deadline = time.monotonic() + 20
    seen = set(running)
    while "reload failed" not in proc.output():
        assert time.monotonic() < deadline, proc.output()
        for pid in children(proc.popen.pid):
            if pid not in seen:
                seen.add(pid)
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.005)
    assert "the running workers go on" in proc.output()
    os.kill(min(running), signal.SIGKILL)
    await wait_ready(admin, 1)  # the supervisor has seen it go
    await wait_ready(admin, 2, timeout=10)  # and restarted it
    assert "restarting it" in proc.output()
    # The workers the failed reload killed never served: nothing of theirs was lost.
    assert proc.stop() == 0, proc.output()[-2000:]


async def test_a_worker_gone_before_its_start_message_is_a_worker_that_failed_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor writes a new worker its start message once the process exists. One already
    gone by then (killed the moment it started) makes that write fail: a failed start (the reload
    fails and says why; a restart is tried again), not an exception that ends the reload, or the
    restarts of that place, half done. Here the process never holds its end of the channel."""
    real = asyncio.create_subprocess_exec

    async def gone_at_once(*args: object, pass_fds: object = (), **kwargs: object) -> object:
        process = await real(sys.executable, "-c", "pass", **kwargs)  # type: ignore[arg-type]
        await process.wait()
        return process

    cfg = replace(
        make_config("http://127.0.0.1:9", tmp_path / "cache"),
        listen=f"127.0.0.1:{free_port()}",
        admin=AdminConfig(enabled=False),
    )
    supervisor = Supervisor(cfg, open_node, workers=1)
    supervisor.bind()
    monkeypatch.setattr(asyncio, "create_subprocess_exec", gone_at_once)
    try:
        with pytest.raises(StartError, match="worker 0 exited with status 0"):
            await supervisor._start_generation(cfg)
    finally:
        for worker in supervisor.workers:
            for task in worker.tasks:
                task.cancel()
        for sock in supervisor.public:
            sock.close()


async def test_with_no_worker_left_the_places_are_restarted_without_the_growing_delay(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restart delays (up to 30 s) spare a box a crash loop while other workers answer; with
    every worker dead (a poison request each, a kill of the process group) the node is down, and
    it waited out the delay all the same (~28 s in a fuzz run)."""
    monkeypatch.setattr(supervisor_module, "RESTART_DELAYS", (30.0,))
    cfg = replace(
        make_config(origin.url, tmp_path / "cache"),
        listen=f"127.0.0.1:{free_port()}",
        admin=AdminConfig(enabled=False),
    )
    supervisor = Supervisor(cfg, open_node, workers=2)
    supervisor.bind()
    try:
        first = await supervisor._start_generation(cfg)
        for worker in first:
            os.kill(worker.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while not (
            len(supervisor.workers) == 2
            and all(w.link.ready.is_set() and w not in first for w in supervisor.workers)
        ):
            assert time.monotonic() < deadline, "the places stayed empty for the 30 s delay"
            await asyncio.sleep(0.1)
        status, _ = await fresh_get(f"http://{cfg.listen}/max-age/60")
        assert status == 200
    finally:
        supervisor.stopping.set()
        await supervisor._stop_all()
        for sock in supervisor.public:
            sock.close()


async def test_workers_exit_when_their_supervisor_is_killed(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """SIGKILL forwards nothing: the workers must notice and release the port, not live on as orphans."""
    proc, _, _ = await start(spawn, 2, origin, tmp_path)
    workers = children(proc.popen.pid)
    assert len(workers) == 2
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(timeout=5)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "worker processes outlived their killed supervisor"
        await asyncio.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


async def test_a_worker_that_does_not_stop_when_drained_is_killed_and_the_exit_status_says_so(
    spawn: Spawn, origin: Origin, tmp_path: Path
) -> None:
    """What a killed worker had queued (L2 write-behind, catalogue rows) is lost: not an exit 0."""
    config = tmp_path / "drain.yaml"
    config.write_text("drain_timeout: 0.2\n")
    proc, _, _ = await start(spawn, 2, origin, tmp_path, "--config", str(config))
    stuck, clean = children(proc.popen.pid)
    os.kill(stuck, signal.SIGSTOP)  # it cannot answer its drain; killed drain_timeout + 5 s later
    try:
        code = proc.stop(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGKILL)
    assert code == 1, proc.output()
    assert "did not stop cleanly" in proc.output()
    assert not Path(f"/proc/{clean}").exists() or _state(clean) == "Z"
