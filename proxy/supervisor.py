"""The supervisor of a node's worker processes: one listening socket, one cache per box.

What must live here: the process side of `minicdn serve`. Like nginx's master,
the supervisor

- binds the listening sockets once and the workers (proxy/worker.py, started
  with `python -m proxy.worker`) inherit them. The public port gets one socket
  per worker in a SO_REUSEPORT group (as nginx's `reuseport`), so the kernel
  spreads connections evenly (one shared socket lets whichever worker wakes
  first take a whole burst of connections); before binding it, the port is
  probed without SO_REUSEPORT, so a second node on the same port fails to
  start with a clear message instead of joining the group. The sockets outlive
  the workers: a replacement worker inherits the same socket, so nothing in
  its accept queue is lost, and until it is ready a live worker accepts on it
  (the kernel goes on handing it its share of new connections);
- coordinates the workers through proxy/box.py: fetch locks (one origin request
  per key per box), box-wide hit-for-pass marks, stats from every worker;
- restarts a worker that dies (with a growing delay), and on SIGHUP (or
  `POST /reload` on the admin API, `minicdn reload`) re-reads the config,
  starts a new generation of workers on the same sockets and lets the old
  ones drain: no connection is refused and L2 (on disk) is kept. A config
  error keeps the old workers and says why;
- on SIGINT / SIGTERM drains every worker (`drain_timeout`) and exits.

The L1 budget is for the whole box: each of N workers gets budget / N.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.box import Coordinator, WorkerLink, encode
from proxy.config import Config, ConfigError, check_admin
from proxy.log_output import announce
from proxy.node import NodeFactory
from proxy.worker import start_message

log = logging.getLogger("proxy.supervisor")

READY_TIMEOUT = 60.0  # seconds a new worker may take to open its node and listen
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after the 1st, 2nd, ... crash in a row
STABLE_SECONDS = 60.0  # a worker that ran this long before it died counts as a first crash
# The restart delay once no worker serves: the growing delays spare the box a crash loop while
# other workers answer; with none left the node is down, and waiting 30 s helps nobody.
NONE_SERVING_DELAY = 0.5


class StartError(Exception):
    """The node could not start (a socket, a worker); the message says why."""


def bind(listen: str, what: str, *, group: int = 0) -> list[socket.socket]:
    """Listening TCP sockets on HOST:PORT: one plain socket, or a SO_REUSEPORT group of `group`.

    StartError, naming the address, when the port is taken: also by another
    node's SO_REUSEPORT group, which a plain probe bind detects (members of a
    group would otherwise let any newcomer of the same user join them).
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        probe = _listener(family, address, reuse_port=False)
        if not group:
            sockets.append(probe)
        else:
            probe.close()  # free: now the group takes it (an ephemeral port 0 is pinned by the first)
            first = _listener(family, address, reuse_port=True)
            sockets.append(first)
            address = first.getsockname()
            sockets += [_listener(family, address, reuse_port=True) for _ in range(group - 1)]
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = exc.strerror or str(exc)
        raise StartError(f"cannot listen on {listen} ({what}): {reason}") from exc
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


def _listener(family: int, address: Any, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(eq=False)
class Worker:
    """One worker process and its place in the box."""

    index: int
    generation: int
    process: asyncio.subprocess.Process
    link: WorkerLink
    crashes: int = 0  # crashes in a row of this worker's place before it started
    group: list[socket.socket] = field(default_factory=list)  # the public sockets it inherited
    started: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _serves(worker: Worker) -> bool:
    """Whether a worker is up and answering: ready, not draining, not exited."""
    return worker.link.ready.is_set() and not worker.link.draining and worker.process.returncode is None


class Supervisor:
    """Runs N workers of one node on sockets it owns."""

    def __init__(
        self,
        cfg: Config,
        factory: NodeFactory,
        *,
        workers: int,
        reload_config: Callable[[], Config] | None = None,
        origin_listen: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.factory = factory
        self.count = workers
        self.reload_config = reload_config
        self.origin_listen = origin_listen
        self.coordinator = Coordinator()
        self.coordinator.reload = self.reload
        self.public: list[socket.socket] = []  # a SO_REUSEPORT group; worker i accepts on i % len
        self.admin: socket.socket | None = None
        self.workers: list[Worker] = []
        self.generation = 0
        self.stopping = asyncio.Event()
        # Workers that did not exit cleanly when drained (killed, or a failing exit status): what
        # they held in memory (L2 write-behind, catalogue rows) may be lost, and the exit code says so.
        self.unclean_exits = 0
        self._reloading = asyncio.Lock()
        # The reload that has not started yet (it waits for the one under way): every request for a
        # reload made meanwhile is answered by it, as it reads the config only when it starts.
        self._next_reload: asyncio.Task[tuple[bool, str]] | None = None
        # Reloads held until done (the loop keeps only weak references to tasks).
        self._reloads: set[asyncio.Task[tuple[bool, str]]] = set()
        # Places (worker indexes) whose worker died and whose replacement is not ready yet, and the
        # live worker accepting on each one's sockets meanwhile (see _cover).
        self.empty: set[int] = set()
        self.covering: dict[int, Worker] = {}
        self._origin: web.AppRunner | None = None

    # ------------------------------------------------------------------ start

    def bind(self) -> None:
        """Bind the public and admin sockets (before anything else starts)."""
        self.public = bind(self.cfg.listen, "public", group=self.count)
        if self.cfg.admin.enabled:
            try:
                (self.admin,) = bind(self.cfg.admin.listen, "admin API")
            except StartError:
                _close(self.public)
                raise

    async def run(self) -> int:
        """Start the workers, keep them running until SIGINT / SIGTERM, then drain them; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            if self.origin_listen is not None:
                await self._start_origin_stub()
            generation = await self._start_generation(self.cfg)
        except StartError as exc:
            announce(log, f"minicdn: {exc}", error=True)
            await self._stop_all()
            return 1
        self._banner(len(generation))
        await self.stopping.wait()
        log.info("stopping: draining %d workers", len(self.workers))
        await self._stop_all()
        if self.unclean_exits:
            log.error(
                "%d worker(s) did not stop cleanly; writes they had queued may be lost", self.unclean_exits
            )
            return 1
        return 0

    def _banner(self, workers: int) -> None:
        cfg = self.cfg
        admin = f"; admin API on http://{cfg.admin.listen}" if self.admin is not None else ""
        several = f" ({workers} workers)" if workers > 1 else ""
        announce(
            log,
            f"edge {cfg.name} listening on http://{cfg.listen}{several} -> origin {cfg.origin.url} "
            f"(L2 in {cfg.cache.dir}){admin}; Ctrl-C stops",
        )

    async def _start_origin_stub(self) -> None:
        from origin_stub.app import create_app as create_origin

        assert self.origin_listen is not None
        host, _, port = self.origin_listen.rpartition(":")
        runner = web.AppRunner(create_origin(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host.strip("[]"), int(port), reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise StartError(f"cannot listen on {self.origin_listen} (stub origin): {exc.strerror}") from exc
        self._origin = runner
        announce(log, f"origin stub listening on http://{self.origin_listen}")

    def _worker_config(self, cfg: Config, count: int) -> Config:
        """A worker's config: its share of the box's L1 budget (cache.l1.budget is per box), and
        the box's size as `workers` (0 there means one per core: the worker learns the number)."""
        l1 = dataclasses.replace(cfg.cache.l1, budget=max(1, cfg.cache.l1.budget // count))
        return dataclasses.replace(cfg, workers=count, cache=dataclasses.replace(cfg.cache, l1=l1))

    async def _start_generation(self, cfg: Config) -> list[Worker]:
        """Start `self.count` workers with cfg and wait until each is ready; StartError if one is not."""
        self.generation += 1
        generation = self.generation
        worker_cfg = self._worker_config(cfg, self.count)
        started = [await self._spawn(worker_cfg, index, generation) for index in range(self.count)]
        self.coordinator.announce()
        try:
            for worker in started:
                await self._wait_ready(worker)
        except StartError:
            for worker in started:
                await self._drain(worker, kill_after=1.0)
            raise
        return started

    async def _spawn(self, cfg: Config, index: int, generation: int, crashes: int = 0) -> Worker:
        assert self.public
        ours, theirs = socket.socketpair()
        # Worker i accepts on socket i of the group (and on i + N, ... when there are more sockets).
        public = self._place_fds(index)
        # Every socket of the group, though it accepts on its place's only: it may have to accept
        # on another's while that one is empty (_cover).
        fds = [theirs.fileno(), *(s.fileno() for s in self.public)]
        args = ["--channel", str(theirs.fileno()), "--public", ",".join(map(str, public))]
        if self.admin is not None:
            fds.append(self.admin.fileno())
            args += ["--admin", str(self.admin.fileno())]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.worker", *args, pass_fds=fds, stdin=asyncio.subprocess.DEVNULL
        )
        theirs.close()
        try:
            ours.sendall(encode(start_message(cfg, self.factory, index, generation)))
        except OSError:
            # It died already (killed as it started): _wait_ready sees it exit, as any worker that
            # fails at start. Raised from here, this ended the reload or the restarts of its place.
            log.debug("worker %d (pid %d) exited before its start message", index, process.pid)
        link = await self.coordinator.attach(ours, index, process.pid, generation)
        worker = Worker(index, generation, process, link, crashes, group=list(self.public))
        worker.tasks.append(asyncio.create_task(self.coordinator.serve(link), name=f"box link {index}"))
        worker.tasks.append(asyncio.create_task(self._watch(worker, cfg), name=f"worker {index} watch"))
        self.workers.append(worker)
        return worker

    def _place_sockets(self, place: int) -> list[socket.socket]:
        """A place's public sockets: socket j of the group belongs to place j % count."""
        return [s for j, s in enumerate(self.public) if j % self.count == place]

    def _place_fds(self, place: int) -> list[int]:
        return [s.fileno() for s in self._place_sockets(place)]

    def _cover(self) -> None:
        """Have a live worker accept on each empty place's sockets until its replacement is ready.

        The kernel keeps handing a place's sockets their share of new connections
        (SO_REUSEPORT spreads by address, not by who accepts), so while a place is
        empty (a restart delay, a replacement starting, a replacement that keeps
        failing) that share would wait unanswered, for ever if it never comes back.
        """
        for place in sorted(self.empty - self.covering.keys()):
            sockets = self._place_sockets(place)
            helpers = [
                w
                for w in self.workers
                if w.generation == self.generation
                and w.index != place
                and w.index not in self.empty
                and _serves(w)
                and all(any(s is g for g in w.group) for s in sockets)  # it has these fds
            ]
            if not helpers:
                continue
            helper = min(helpers, key=lambda w: sum(c is w for c in self.covering.values()))
            self.covering[place] = helper
            helper.link.send({"op": "adopt", "place": place, "fds": [s.fileno() for s in sockets]})

    def _uncover(self, place: int) -> None:
        """A place has its worker again: whoever accepted for it stops."""
        self.empty.discard(place)
        helper = self.covering.pop(place, None)
        if helper is not None:
            helper.link.send({"op": "release", "place": place})

    async def _wait_ready(self, worker: Worker) -> None:
        ready = asyncio.create_task(worker.link.ready.wait())
        exited = asyncio.create_task(worker.process.wait())
        await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not worker.link.ready.is_set():
            code = worker.process.returncode
            why = (
                f"exited with status {code}"
                if code is not None
                else f"was not ready in {READY_TIMEOUT:.0f} s"
            )
            raise StartError(f"worker {worker.index} {why} (see its messages above)")

    async def _watch(self, worker: Worker, cfg: Config) -> None:
        """Restart a worker that exits on its own (a crash), after a delay that grows with repeats."""
        code = await worker.process.wait()
        if worker in self.workers:
            self.workers.remove(worker)
        self.coordinator.detach(worker.link)
        # What it accepted for other empty places, another live worker takes on.
        for place in [p for p, w in self.covering.items() if w is worker]:
            del self.covering[place]
        self._cover()
        if self.stopping.is_set() or worker.link.draining or not worker.link.ready.is_set():
            return
        if not await self._current(worker):
            return  # a reload replaced it meanwhile
        self.empty.add(worker.index)
        self._cover()
        # A worker that ran for a while before it died starts the count of crashes anew.
        crashes = 0 if time.monotonic() - worker.started > STABLE_SECONDS else worker.crashes
        delay = RESTART_DELAYS[min(crashes, len(RESTART_DELAYS) - 1)]
        log.error(
            "worker %d (pid %d) exited with status %s; restarting it in %.1f s",
            worker.index,
            worker.process.pid,
            code,
            delay,
        )
        # Until a replacement is ready: one that dies (or hangs) before it is ready has no watch of
        # its own to restart it (that covers ready workers only), so it is tried again from here,
        # after a growing delay. Giving up would leave its place empty for good: with every place
        # empty the kernel still queues connections on the port, and nobody answers them.
        while True:
            await self._restart_pause(delay)
            if self.stopping.is_set() or not await self._current(worker):
                return
            crashes += 1
            replacement = await self._spawn(cfg, worker.index, worker.generation, crashes)
            self.coordinator.announce()
            try:
                await self._wait_ready(replacement)
                self._uncover(worker.index)
                self._cover()  # it may stand in for another place that is empty
                return  # its own watch restarts it from now on
            except StartError as exc:
                if self.stopping.is_set() or replacement.link.draining:
                    return
                delay = RESTART_DELAYS[min(crashes, len(RESTART_DELAYS) - 1)]
                log.error("restarting worker %d failed: %s; trying again in %.1f s", worker.index, exc, delay)
                if replacement.process.returncode is None:  # not ready in time: not one more beside it
                    with contextlib.suppress(ProcessLookupError):
                        replacement.process.kill()
                    await replacement.process.wait()

    async def _restart_pause(self, delay: float) -> None:
        """Wait `delay` before a restart, or NONE_SERVING_DELAY once no worker serves (every
        worker died, e.g. of one poison request each, or the kill of a process group)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, NONE_SERVING_DELAY))
            if not self._serving():
                return

    def _serving(self) -> bool:
        """Whether some worker is up and answering."""
        return any(_serves(w) for w in self.workers)

    async def _current(self, worker: Worker) -> bool:
        """Whether worker is of the serving generation, once any reload under way has ended: one
        that fails keeps the running generation (its number was taken for the new one meanwhile)."""
        async with self._reloading:
            return worker.generation == self.generation

    # ----------------------------------------------------------------- reload

    def _sighup(self) -> None:
        reload, new = self._reload_to_come()
        if not new:
            log.info("SIGHUP: a reload is already waiting to start, and reads the config then")
            return

        def logged(task: asyncio.Task[tuple[bool, str]]) -> None:
            if task.cancelled():
                return
            if (exc := task.exception()) is not None:
                log.error("reload failed", exc_info=exc)
                return
            ok, message = task.result()
            (log.info if ok else log.error)("%s", message)

        reload.add_done_callback(logged)

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config and replace the workers; on any error keep the old ones. (ok, message).

        Reloads asked for in quick succession (SIGHUPs, `POST /reload`) do not queue up one
        generation of workers each: while one is under way, the requests made meanwhile share one
        more, which reads the config when it starts, so it applies the latest and answers them all.
        """
        reload, _ = self._reload_to_come()
        return await asyncio.shield(reload)  # one asker gone does not stop it for the others

    def _reload_to_come(self) -> tuple[asyncio.Task[tuple[bool, str]], bool]:
        """The reload that answers a request made now (the one waiting to start, else a new one), and
        whether it is new."""
        if self._next_reload is not None:
            return self._next_reload, False
        reload = asyncio.get_running_loop().create_task(self._reload_when_free(), name="reload")
        self._next_reload = reload
        self._reloads.add(reload)
        reload.add_done_callback(self._reloads.discard)
        return reload, True

    async def _reload_when_free(self) -> tuple[bool, str]:
        async with self._reloading:
            # Started: it reads the config now; a reload asked for from here on may follow a newer edit.
            self._next_reload = None
            return await self._reload_now()

    async def _reload_now(self) -> tuple[bool, str]:
        """The reload itself, under self._reloading."""
        if self.reload_config is None:
            return False, "reload: this node was started without a config to re-read"
        try:
            cfg = self.reload_config()
            check_admin(cfg)
        except ConfigError as exc:
            return False, f"reload failed, the running workers go on: {exc}"
        except Exception as exc:
            # Reading the config must only raise ConfigError; anything else (a validation gap) is
            # still an answer: propagated, it left `POST /reload` waiting for one (120 s, and
            # `minicdn reload` timed out) and SIGHUP with an unretrieved task exception.
            log.exception("reading the config for a reload failed")
            return False, f"reload failed, the running workers go on: cannot read the config: {exc!r}"
        old_public, old_admin = self.public, self.admin
        count = cfg.workers or os.cpu_count() or 1
        try:
            if cfg.listen != self.cfg.listen:
                self.public = bind(cfg.listen, "public", group=count)
            elif count > len(self.public):
                # More workers: more sockets join the group (same port, same owner).
                address = self.public[0].getsockname()
                family = self.public[0].family
                added = [_listener(family, address, reuse_port=True) for _ in range(count - len(self.public))]
                for sock in added:
                    sock.set_inheritable(True)
                self.public = [*self.public, *added]
            if cfg.admin.enabled != self.cfg.admin.enabled or cfg.admin.listen != self.cfg.admin.listen:
                self.admin = bind(cfg.admin.listen, "admin API")[0] if cfg.admin.enabled else None
        except (StartError, OSError) as exc:
            self._close_new(old_public, old_admin)
            return False, f"reload failed, the running workers go on: {exc}"
        old = list(self.workers)
        previous_count, self.count = self.count, count
        previous_generation = self.generation
        try:
            started = await self._start_generation(cfg)
        except StartError as exc:
            # The running workers go on, and are still the ones to restart when they die.
            self.generation = previous_generation
            self.count = previous_count
            self._close_new(old_public, old_admin)
            return False, f"reload failed, the running workers go on: {exc}"
        previous = self.cfg
        self.cfg = cfg
        self.empty.clear()  # the new generation fills every place; the old one drains
        self.covering.clear()
        for worker in old:
            asyncio.get_running_loop().create_task(self._drain(worker))
        if cfg.listen != previous.listen:
            _close(old_public)  # the old workers stop accepting on them as they drain
        if old_admin is not self.admin and old_admin is not None:
            old_admin.close()
        changed = [
            f.name for f in dataclasses.fields(Config) if getattr(previous, f.name) != getattr(cfg, f.name)
        ]
        what = ", ".join(c for c in changed if c != "source") or "nothing"
        summary = f"{len(started)} workers (generation {self.generation}); changed: {what}"
        return True, f"reloaded {cfg.source}: {summary}"

    def _close_new(self, old_public: list[socket.socket], old_admin: socket.socket | None) -> None:
        """Undo the sockets a failed reload bound."""
        _close([s for s in self.public if s not in old_public])
        if self.admin is not old_admin and self.admin is not None:
            self.admin.close()
        self.public, self.admin = old_public, old_admin

    # ------------------------------------------------------------------- stop

    async def _drain(self, worker: Worker, kill_after: float | None = None) -> None:
        """Ask a worker to finish and exit; kill it if it has not within its drain time (+ a margin)."""
        worker.link.draining = True
        worker.link.send({"op": "drain"})
        limit = kill_after if kill_after is not None else self.cfg.drain_timeout + 5.0
        try:
            await asyncio.wait_for(worker.process.wait(), limit)
        except TimeoutError:
            log.error(
                "worker %d (pid %d) did not exit after draining; killing it", worker.index, worker.process.pid
            )
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()
        if worker.process.returncode != 0 and worker.link.ready.is_set():
            # (One never ready, such as a reload's that failed to start, served nothing, queued nothing.)
            self.unclean_exits += 1

    async def _stop_all(self) -> None:
        self.stopping.set()
        await asyncio.gather(*(self._drain(w) for w in list(self.workers)), return_exceptions=True)
        for worker in list(self.workers):
            for task in worker.tasks:
                task.cancel()
        if self._origin is not None:
            await self._origin.cleanup()
        _close(self.public)
        if self.admin is not None:
            self.admin.close()


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def supervise(
    cfg: Config,
    factory: NodeFactory,
    *,
    workers: int,
    reload_config: Callable[[], Config] | None = None,
    origin_listen: str | None = None,
) -> int:
    """Bind, run the workers until a stop signal, and return the exit code (1: could not start)."""
    supervisor = Supervisor(
        cfg, factory, workers=workers, reload_config=reload_config, origin_listen=origin_listen
    )
    try:
        supervisor.bind()
    except StartError as exc:
        announce(log, f"minicdn: {exc}", error=True)
        return 1
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    log.debug("supervisor pid %d", os.getpid())
    return asyncio.run(supervisor.run())
