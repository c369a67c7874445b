"""The box's fetch locks (proxy/box.py) over real socketpairs: the supervisor's Coordinator and
several workers' BoxClients in one event loop, as the supervisor and its worker processes talk.

What they must guarantee (issue: one box, one cache): one leader per key; waiters hear the
leader's outcome; a leader that dies releases its keys at once ("gone"); a wait is bounded; a
background fetch never waits; an unshareable key becomes hit-for-pass for the whole box.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from proxy.box import BoxClient, Coordinator, WorkerLink


class Box:
    def __init__(self) -> None:
        self.now = 1000.0
        self.coordinator = Coordinator(clock=lambda: self.now)
        self.clients: list[BoxClient] = []
        self.links: list[WorkerLink] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def worker(self) -> BoxClient:
        ours, theirs = socket.socketpair()
        index = len(self.clients)
        link = await self.coordinator.attach(ours, index, pid=10_000 + index, generation=1)
        self.tasks.append(asyncio.create_task(self.coordinator.serve(link)))
        client = BoxClient(theirs, index)
        await client.start()
        self.clients.append(client)
        self.links.append(link)
        self.coordinator.announce()
        return client


@pytest.fixture
async def box() -> AsyncIterator[Box]:
    b = Box()
    yield b
    for client in b.clients:
        await client.close()
    for task in b.tasks:
        task.cancel()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def test_one_worker_leads_and_the_others_hear_its_outcome(box: Box) -> None:
    a, b, c = await box.worker(), await box.worker(), await box.worker()
    await settle()
    assert a.shared and a.workers == 3
    lead = await a.lock("k", wait=True, timeout=5)
    assert lead.kind == "lead"
    waits = [asyncio.create_task(w.lock("k", wait=True, timeout=5)) for w in (b, c)]
    await settle()
    assert not any(t.done() for t in waits)  # they wait for the leader
    a.release("k", "stored", 30)
    results = await asyncio.gather(*waits)
    assert [(r.kind, r.outcome) for r in results] == [("done", "stored"), ("done", "stored")]
    assert (await b.lock("k", wait=True, timeout=5)).kind == "lead"  # released: the next one leads


async def test_a_background_fetch_never_waits(box: Box) -> None:
    a, b = await box.worker(), await box.worker()
    assert (await a.lock("k", wait=True, timeout=5)).kind == "lead"
    assert (await b.lock("k", wait=False, timeout=5)).kind == "busy"


async def test_a_dead_leader_releases_its_keys_at_once(box: Box) -> None:
    a, b = await box.worker(), await box.worker()
    assert (await a.lock("k", wait=True, timeout=30)).kind == "lead"
    waiting = asyncio.create_task(b.lock("k", wait=True, timeout=30))
    await settle()
    started = asyncio.get_running_loop().time()
    await a.close()  # the worker process died: its end of the socketpair closes
    result = await waiting
    assert (result.kind, result.outcome) == ("done", "gone")
    assert asyncio.get_running_loop().time() - started < 2  # not the 30 s bound
    await settle()
    assert b.workers == 1 and not b.shared  # alone now: the locks are skipped


async def test_a_wait_is_bounded(box: Box) -> None:
    a, b = await box.worker(), await box.worker()
    assert (await a.lock("k", wait=True, timeout=5)).kind == "lead"
    result = await b.lock("k", wait=True, timeout=0.2)
    assert result.kind == "timeout"


async def test_an_unshareable_key_is_passed_for_the_whole_box_until_its_mark_expires(box: Box) -> None:
    a, b, c = await box.worker(), await box.worker(), await box.worker()
    assert (await a.lock("k", wait=True, timeout=5)).kind == "lead"
    waiting = asyncio.create_task(b.lock("k", wait=True, timeout=5))
    await settle()
    a.release("k", "unshareable", 30)
    assert (await waiting).outcome == "unshareable"
    assert (await c.lock("k", wait=True, timeout=5)).kind == "pass"  # no queue behind it
    box.now += 31
    assert (await c.lock("k", wait=True, timeout=5)).kind == "lead"


async def test_only_the_holder_releases(box: Box) -> None:
    a, b = await box.worker(), await box.worker()
    assert (await a.lock("k", wait=True, timeout=5)).kind == "lead"
    b.release("k", "stored", 0)  # not b's to release
    await settle()
    assert (await b.lock("k", wait=False, timeout=5)).kind == "busy"


async def test_stats_come_from_every_worker(box: Box) -> None:
    a, b = await box.worker(), await box.worker()

    def snapshot(n: int) -> object:
        async def take() -> dict[str, object]:
            return {"engine": {"requests": n}}

        return take

    a.snapshot = snapshot(3)  # type: ignore[assignment]
    b.snapshot = snapshot(4)  # type: ignore[assignment]
    answer = await a.request({"op": "stats"}, timeout=5)
    assert answer is not None
    assert sorted(w["engine"]["requests"] for w in answer["workers"]) == [3, 4]


async def test_without_a_supervisor_a_worker_fetches_alone(box: Box) -> None:
    a = await box.worker()
    for task in box.tasks:
        task.cancel()
    box.links[0].writer.close()
    await settle()
    assert a.lost.is_set() and not a.shared
    assert (await a.lock("k", wait=True, timeout=1)).kind == "unavailable"


async def test_readiness_gates_passed_in_the_box_reach_workers_that_start_later(box: Box) -> None:
    """proxy/readiness.py: a worker started during an outage knows the checks passed before."""
    first = await box.worker()
    first.tell_passed(["origin http://o.test"])
    deadline = asyncio.get_running_loop().time() + 2
    while not box.coordinator.checks_passed:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    later = await box.worker()
    while not later.checks_passed:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    assert later.checks_passed == {"origin http://o.test"}


async def test_readiness_gates_passed_in_one_worker_reach_the_workers_already_running(box: Box) -> None:
    """README "Readiness": once a check has passed in the box, an outage makes the node "degraded"
    whichever worker a probe reaches; a sibling that had not checked yet answered "not ready"."""
    first, second, third = await box.worker(), await box.worker(), await box.worker()
    second.tell_passed(["origin http://o.test"])
    deadline = asyncio.get_running_loop().time() + 2
    while not (first.checks_passed and third.checks_passed):
        assert asyncio.get_running_loop().time() < deadline, "a running worker never heard of the pass"
        await asyncio.sleep(0.01)
    assert first.checks_passed == third.checks_passed == {"origin http://o.test"}


def test_workers_are_told_the_box_size_in_their_config() -> None:
    """`workers: 0` (one per core) becomes the number the supervisor started: edge/fanout.py's
    consumer takes over the saved outboxes of the slots beyond it."""
    from proxy.config import Config
    from proxy.node import open_node
    from proxy.supervisor import Supervisor

    supervisor = Supervisor(Config(workers=0), open_node, workers=3)
    assert supervisor._worker_config(Config(workers=0), 3).workers == 3
