"""One box, one cache: what the worker processes of a node coordinate through their supervisor.

What must live here: the messages between the supervisor (proxy/supervisor.py)
and its workers, and the two ends that speak them. Each worker holds one
connection (a socketpair the supervisor made) and uses it for:

- **fetch locks**, so that a burst of misses (or stale hits) for one key makes
  one origin request per box, not one per worker: the first worker to ask
  leads; the others wait until it releases the key with an outcome, then read
  the stored copy from the shared L2 (or fetch alone if there is none). A
  lock held by a worker that dies is released as "gone" the moment its
  connection closes, and every wait is bounded by the caller's timeout, so a
  crashed leader never strands anyone. A response that may not be shared
  (private, Set-Cookie, no-store) is never handed over: its key is marked
  hit-for-pass for the whole box instead;
- **stats**: one worker's request for the box's numbers is answered with a
  snapshot from every live worker, and the counters of the workers that are
  gone (their last snapshot: the one a draining worker sends as it exits, or
  the last one gathered), so that what the box counted never goes down;
- **reload**: `POST /reload` on the admin API asks the supervisor to re-read
  its config and replace the workers;
- **control** from the supervisor: how many workers share the box now (a lone
  worker skips the locks), "drain" (stop accepting, finish, exit), and "adopt" /
  "release" a place: accept on the public sockets of a worker that died too,
  until its replacement is ready (proxy/supervisor.py says why);
- **purges that could not be logged** (a full disk): the worker that carried one out tells the box,
  and every other worker carries it out too, as it would have from the purge log;
- **readiness gates**: the readiness checks that have passed once in the box
  (proxy/readiness.py), told by the worker that saw them pass and handed to
  every other worker, running or started later, so the box is "degraded", not "not ready",
  whichever worker a probe reaches during an outage.

Messages are JSON objects, one per line. Nothing here touches the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from proxy import observe

log = logging.getLogger("proxy.box")

# What a worker learns when it asks for a key's fetch lock.
LockKind = Literal["lead", "busy", "pass", "done", "timeout", "unavailable"]
# How a leader released a key: its copy is in L2 ("stored"), it may not be shared
# ("unshareable"), or nothing useful came of it ("error"); "gone" when the leader died.
Outcome = Literal["stored", "unshareable", "error", "gone"]

PASS_MARK_LIMIT = 100_000
LINE_LIMIT = 64 * 1024 * 1024  # a stats snapshot of a busy worker stays far below this


@dataclass(frozen=True, slots=True)
class Lock:
    kind: LockKind
    outcome: Outcome | None = None


class FetchLocks(Protocol):
    """What the engine needs of the box: the fetch locks (BoxClient has them)."""

    @property
    def shared(self) -> bool: ...

    async def lock(self, key: str, *, wait: bool, timeout: float) -> Lock: ...

    def release(self, key: str, outcome: Outcome, pass_seconds: float) -> None: ...


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


# --------------------------------------------------------------------------- worker side


Snapshot = Callable[[], Awaitable[dict[str, Any]]]


class BoxClient:
    """A worker's end of the connection to its supervisor."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.workers = 1  # live workers in the box, as the supervisor last said
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._done: dict[int, asyncio.Future[Outcome]] = {}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.snapshot: Snapshot | None = None  # set by the worker: its own stats
        # Set by the worker: ("adopt" or "release", a place, the fds of its public sockets).
        self.places: Callable[[str, int, list[int]], None] | None = None
        self.drain = asyncio.Event()  # the supervisor asked this worker to finish and exit
        self.lost = asyncio.Event()  # the supervisor is gone
        self.checks_passed: set[str] = set()  # readiness gates passed in the box (Readiness.passed)
        # Set by the worker: a purge another worker carried out without the purge log (a full disk).
        self.on_purge: Callable[[dict[str, Any]], None] | None = None

    @property
    def shared(self) -> bool:
        """Whether other workers share the box (else the locks are skipped)."""
        return self.workers > 1 and not self.lost.is_set()

    async def start(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(sock=self.sock, limit=LINE_LIMIT)
        self._task = asyncio.create_task(self._read_loop(), name="box client")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
        self._fail_all()

    def send(self, message: dict[str, Any]) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing():
            writer.write(encode(message))

    async def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send a message that gets a reply; None when there is none in time (or no supervisor)."""
        if self.lost.is_set() or self._writer is None:
            return None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        self.send({**message, "id": ident})
        try:
            return await asyncio.wait_for(future, timeout)
        except (TimeoutError, ConnectionError):
            return None
        finally:
            self._replies.pop(ident, None)

    # ---------------------------------------------------------------- fetch locks

    async def lock(self, key: str, *, wait: bool, timeout: float) -> Lock:
        """Lead the fetch of key, or wait (at most `timeout`) for the worker that leads it.

        wait=False (background revalidation, refresh-ahead) never waits: "busy"
        when another worker is already at it.
        """
        if self.lost.is_set() or self._writer is None:
            return Lock("unavailable")
        ident = next(self._ids)
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        done: asyncio.Future[Outcome] = loop.create_future()
        self._replies[ident] = reply
        self._done[ident] = done
        self.send({"op": "lock", "id": ident, "key": key, "wait": wait})
        deadline = loop.time() + timeout
        try:
            try:
                answer = await asyncio.wait_for(reply, timeout)
            except (TimeoutError, ConnectionError):
                return Lock("unavailable")
            grant = answer.get("grant")
            if grant in ("lead", "busy", "pass"):
                return Lock(grant)
            try:
                outcome = await asyncio.wait_for(done, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return Lock("timeout")
            except ConnectionError:
                return Lock("unavailable")
            return Lock("done", outcome)
        finally:
            self._replies.pop(ident, None)
            self._done.pop(ident, None)

    def release(self, key: str, outcome: Outcome, pass_seconds: float) -> None:
        self.send({"op": "release", "key": key, "outcome": outcome, "pass": pass_seconds})

    def tell_passed(self, gates: list[str]) -> None:
        """Readiness gates this worker saw pass first (Readiness.on_first_pass)."""
        self.send({"op": "passed", "checks": gates})

    # ----------------------------------------------------------------- reading

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("box: unreadable message from the supervisor")
                    continue
                self._handle(message)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("box: connection to the supervisor failed: %s", exc)
        self.lost.set()
        self._fail_all()

    def _handle(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        ident = message.get("id")
        if op == "done":
            future = self._done.get(ident) if isinstance(ident, int) else None
            if future is not None and not future.done():
                future.set_result(message.get("outcome", "error"))
        elif op == "workers":
            self.workers = int(message.get("count", 1))
        elif op == "passed":
            self.checks_passed.update(_gates(message))
        elif op == "snapshot":
            # Off the read loop: gathering reads the disk tier's numbers on a thread.
            task = asyncio.get_running_loop().create_task(self._send_snapshot(ident))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        elif op == "drain":
            self.drain.set()
        elif op == "purge":
            if self.on_purge is not None:
                self.on_purge(message)
        elif op in ("adopt", "release"):
            fds = message.get("fds")
            if self.places is not None and isinstance(message.get("place"), int):
                self.places(op, message["place"], [fd for fd in fds if isinstance(fd, int)] if fds else [])
        elif isinstance(ident, int):
            future2 = self._replies.get(ident)
            if future2 is not None and not future2.done():
                future2.set_result(message)

    async def _send_snapshot(self, ident: object) -> None:
        try:
            stats = await self.snapshot() if self.snapshot is not None else {}
        except Exception:
            log.exception("box: this worker's stats snapshot failed")
            stats = {}
        self.send({"op": "snapshot", "id": ident, "stats": stats})

    def _fail_all(self) -> None:
        futures: list[asyncio.Future[Any]] = [*self._replies.values(), *self._done.values()]
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionError("the supervisor is gone"))
        self._replies.clear()
        self._done.clear()


# --------------------------------------------------------------------------- supervisor side


@dataclass(eq=False)
class WorkerLink:
    """The supervisor's end of one worker's connection."""

    index: int
    pid: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    generation: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    draining: bool = False
    held: set[str] = field(default_factory=set)
    waiting: set[tuple[str, int]] = field(default_factory=set)  # (key, request id)
    snapshots: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))


Reload = Callable[[], Awaitable[tuple[bool, str]]]


class Coordinator:
    """The supervisor's side: fetch locks, box-wide hit-for-pass marks, stats gathering."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.links: dict[int, WorkerLink] = {}  # by pid
        self.holders: dict[str, WorkerLink] = {}
        self.waiters: dict[str, list[tuple[WorkerLink, int]]] = {}
        self.passes: dict[str, float] = {}
        self.reload: Reload | None = None
        self._ids = itertools.count(1)
        self.stats = {"locks": 0, "waits": 0, "gone": 0, "passes": 0}
        self.started = time.time()  # the box's start (workers come and go with reloads and restarts)
        # Each live worker's last snapshot (by pid), and the counters of the workers that exited.
        self.last: dict[int, dict[str, Any]] = {}
        self.retired: dict[str, Any] = {}
        self.checks_passed: set[str] = set()  # readiness gates passed in the box, by any worker

    async def attach(self, sock: socket.socket, index: int, pid: int, generation: int) -> WorkerLink:
        reader, writer = await asyncio.open_connection(sock=sock, limit=LINE_LIMIT)
        link = WorkerLink(index, pid, reader, writer, generation)
        self.links[pid] = link
        if self.checks_passed:
            link.send({"op": "passed", "checks": sorted(self.checks_passed)})
        return link

    def serving(self) -> list[WorkerLink]:
        return [link for link in self.links.values() if not link.draining]

    def announce(self) -> None:
        """Tell every worker how many share the box (a lone worker skips the locks)."""
        count = len(self.links)
        for link in self.links.values():
            link.send({"op": "workers", "count": count})

    async def serve(self, link: WorkerLink) -> None:
        """Read one worker's messages until its connection closes; then release what it held."""
        try:
            while True:
                line = await link.reader.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("box: unreadable message from worker %d", link.index)
                    continue
                self._handle(link, message)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.detach(link)
            # Every message read (a draining worker's "final" among them, even when the process
            # was seen to exit first): carry its counters on.
            last = self.last.pop(link.pid, None)
            if last:
                self.retired = observe.add(self.retired, observe.carried(last))

    def detach(self, link: WorkerLink) -> None:
        if self.links.pop(link.pid, None) is None:
            return
        for key in list(link.held):
            self.stats["gone"] += 1
            self._release(link, key, "gone", 0.0)
        for key, ident in link.waiting:
            self.waiters[key] = [(w, i) for w, i in self.waiters.get(key, []) if w is not link or i != ident]
            if not self.waiters[key]:
                del self.waiters[key]
        for future in link.snapshots.values():
            if not future.done():
                future.set_result({})
        link.writer.close()
        self.announce()

    def _handle(self, link: WorkerLink, message: dict[str, Any]) -> None:
        op = message.get("op")
        ident = message.get("id")
        if op == "lock" and isinstance(ident, int):
            self._lock(link, str(message.get("key", "")), ident, bool(message.get("wait", True)))
        elif op == "release":
            self._release(
                link, str(message.get("key", "")), message.get("outcome", "error"), message.get("pass", 0)
            )
        elif op == "ready":
            link.ready.set()
        elif op == "passed":
            # The box's gates: the workers already running hear them too, or a probe would get
            # "degraded" from one worker and "not ready" from another during an outage.
            new = sorted(set(_gates(message)) - self.checks_passed)
            if new:
                self.checks_passed.update(new)
                for other in self.links.values():
                    if other is not link:
                        other.send({"op": "passed", "checks": new})
        elif op == "purge":
            # A purge its worker could not log (a full disk): the others hear of it from here, as
            # they would have from the log (in memory only: a worker started later does not).
            for other in self.serving():
                if other is not link:
                    other.send(message)
        elif op == "snapshot" and isinstance(ident, int):
            future = link.snapshots.pop(ident, None)
            if future is not None and not future.done():
                stats = message.get("stats")
                future.set_result(stats if isinstance(stats, dict) else {})
        elif op == "final":
            stats = message.get("stats")
            if isinstance(stats, dict) and stats:
                self.last[link.pid] = stats  # what it counted, as it exits (serve carries it on)
        elif op == "stats" and isinstance(ident, int):
            asyncio.get_running_loop().create_task(self._answer_stats(link, ident))
        elif op == "reload" and isinstance(ident, int):
            asyncio.get_running_loop().create_task(self._answer_reload(link, ident))

    # ------------------------------------------------------------------ locks

    def _lock(self, link: WorkerLink, key: str, ident: int, wait: bool) -> None:
        self.stats["locks"] += 1
        now = self.clock()
        until = self.passes.get(key)
        if until is not None:
            if now < until:
                link.send({"op": "lock", "id": ident, "grant": "pass"})
                return
            del self.passes[key]
        holder = self.holders.get(key)
        if holder is None:
            self.holders[key] = link
            link.held.add(key)
            link.send({"op": "lock", "id": ident, "grant": "lead"})
            return
        if not wait:
            link.send({"op": "lock", "id": ident, "grant": "busy"})
            return
        self.stats["waits"] += 1
        self.waiters.setdefault(key, []).append((link, ident))
        link.waiting.add((key, ident))
        link.send({"op": "lock", "id": ident, "grant": "wait"})

    def _release(self, link: WorkerLink, key: str, outcome: object, pass_seconds: object) -> None:
        if self.holders.get(key) is not link:
            return
        del self.holders[key]
        link.held.discard(key)
        if outcome == "unshareable" and isinstance(pass_seconds, int | float) and pass_seconds > 0:
            self.stats["passes"] += 1
            if len(self.passes) >= PASS_MARK_LIMIT:
                now = self.clock()
                self.passes = {k: u for k, u in self.passes.items() if u > now}
            self.passes[key] = self.clock() + float(pass_seconds)
        for waiter, ident in self.waiters.pop(key, []):
            waiter.waiting.discard((key, ident))
            waiter.send({"op": "done", "id": ident, "outcome": outcome})

    # ------------------------------------------------------------------ stats

    async def gather(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """A stats snapshot from every live worker (draining ones included: they still count)."""
        loop = asyncio.get_running_loop()
        asked: list[tuple[WorkerLink, asyncio.Future[dict[str, Any]]]] = []
        for link in list(self.links.values()):
            ident = next(self._ids)
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            link.snapshots[ident] = future
            link.send({"op": "snapshot", "id": ident})
            asked.append((link, future))
        answers = []
        for link, future in asked:
            try:
                stats = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                stats = {}
            answers.append((link, stats))
        # Each worker's numbers count once, and never less than they did: a live worker's answer, or
        # if it gave none in time (a blocked loop, a stopped process) its last one; a worker that
        # detached meanwhile, its last one until serve() has carried that into `retired` (then
        # nothing). Nothing awaits from here to the caller's reply, which sends `retired` with these.
        out = []
        for link, stats in answers:
            attached = link.pid in self.links
            if attached and stats:
                self.last[link.pid] = stats
            else:
                if attached:
                    log.warning("box: worker %d did not answer for stats; its last numbers stand", link.index)
                stats = self.last.get(link.pid, {})
            out.append({"worker": link.index, "pid": link.pid, "generation": link.generation, **stats})
        return sorted(out, key=lambda s: (s["generation"], s["worker"]))

    async def _answer_stats(self, link: WorkerLink, ident: int) -> None:
        snapshots = await self.gather()
        box = {"started": self.started, **self.stats}
        link.send({"op": "stats", "id": ident, "workers": snapshots, "box": box, "retired": self.retired})

    async def _answer_reload(self, link: WorkerLink, ident: int) -> None:
        if self.reload is None:
            ok, message = False, "reload is not available"
        else:
            ok, message = await self.reload()
        link.send({"op": "reload", "id": ident, "ok": ok, "message": message})


def _gates(message: dict[str, Any]) -> list[str]:
    checks = message.get("checks")
    return [c for c in checks if isinstance(c, str)] if isinstance(checks, list) else []
