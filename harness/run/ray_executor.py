"""Ray executor: episodes fan out to Ray actors on a local or remote cluster.

Each actor owns one ``EpisodeWorker`` (its own simulator, policies and world model), so an
actor produces exactly the records a local worker process would; world-model episodes are
batched per actor through the chunks of ``chunked``. The driver sends each actor one chunk at a
time, as a streaming generator call: each record comes back the moment its episode ends, and the
caller appends it to ``episodes.jsonl`` at once, whatever the chunk size.

An actor that dies (its process killed, a simulator segfault, its node lost) is replaced and
the items of its chunk whose records had not arrived are retried once; a second death turns them
into ``error`` records. One chunk per actor keeps that attribution certain: with a second chunk
queued, the driver could not tell which of the two killed the actor. The driver's round trip
between chunks costs milliseconds against episodes of seconds.

Stopping (Ctrl-C, SIGTERM, the caller stops reading): the run's actors are killed at once, in
the middle of their episodes, which are re-run on resume; a local cluster this executor started
is shut down. Ray ends a driver's actors by itself when the driver dies.

Workers import this project: on a local cluster they run in the driver's environment; on a
remote cluster every node needs the project installed (``pip install -e ".[distributed,...]"``)
at the same Ray and Python versions, and any path in the run (``--out`` for videos,
checkpoints, datasets) must be visible at the same path on every node. See docs/distributed.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError, require_module
from harness.run.episodes import WorkItem
from harness.run.executors import MAX_ATTEMPTS, chunk_size, chunked, died_records, unfinished
from harness.run.runner import EpisodeWorker, RunSettings, failed_records
from harness.run.store import key_of

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # for the reachability check of --ray-address HOST:PORT
WAIT_S = 1.0  # ray.wait in slices, so Ctrl-C reaches the driver promptly
FIX = ("start a cluster with `ray start --head` and pass --ray-address HEAD_IP:6379, use "
       "--ray-address auto on a node of a running cluster, or leave --ray-address out to start a "
       "local cluster")


class EpisodeActor:
    """The body of one Ray actor: an EpisodeWorker running the chunks sent to it, in order."""

    def __init__(self, settings: RunSettings, name: str):
        from harness.run.allocator import keep_freed_memory

        logging.basicConfig(level=logging.WARNING)
        keep_freed_memory()  # as local workers do
        self.worker = EpisodeWorker(settings)
        self.name = name

    def pid(self) -> int:
        return os.getpid()

    def run_batch(self, chunk: list[WorkItem]) -> Iterator[dict[str, Any]]:
        """The records of ``chunk``, each as its episode ends."""
        for record in self.worker.run_batch(chunk):
            record["worker"] = self.name
            yield record

    def stream(self, chunk: list[WorkItem]) -> Iterator[dict[str, Any]]:
        """What the driver calls: ``run_batch``'s records, each sent to the driver as it is
        yielded. Ray streams only from a generator function; ``run_batch`` may be overridden by
        any function that returns records."""
        yield from self.run_batch(chunk)


@dataclass
class _Task:
    """A chunk running on an actor: its stream of records, and the keys of those that arrived."""

    chunk: list[WorkItem]
    attempt: int
    submitted: float
    records: Any  # the ObjectRefGenerator of the actor's ``stream`` call
    arrived: set = field(default_factory=set)


@dataclass
class _Actor:
    name: str
    handle: Any
    pid_ref: Any  # the actor's first call: resolves once the actor process is up
    task: _Task | None = None


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a "HOST:PORT" or "ray://HOST:PORT" address; None for "auto"/"local"."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast with one line when a HOST:PORT address does not accept connections: ray.init
    itself retries an unreachable address for minutes."""
    target = host_port(address)
    if target is None:
        if address not in ("auto", "local"):
            raise HarnessError(f"--ray-address {address!r} is not auto, local, HOST:PORT or ray://HOST:PORT: {FIX}")
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as exc:
        raise HarnessError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}, "
                           f"tried for up to {timeout:g} s): {FIX}") from None


class RayExecutor:
    """``workers`` Ray actors; a local cluster of ``workers`` CPUs when ``address`` is None,
    otherwise the cluster at ``address`` ("auto", "HOST:PORT", "ray://HOST:PORT")."""

    actor_class: type = EpisodeActor  # what each actor runs (a subclass may wrap it)

    def __init__(self, settings: RunSettings, workers: int = 1, address: str | None = None):
        require_module("ray", "Ray", "distributed")
        self.settings = settings
        self.workers = max(1, workers)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address == "local":
            self.address = None
        if self.address is not None:
            check_reachable(self.address)
        self._actors: list[_Actor] = []
        self._spawned = 0
        self._remote_class = None

    def map(self, items: Iterable[WorkItem]) -> Iterator[dict[str, Any]]:
        chunks = chunked(items, chunk_size(self.settings))
        first = next(chunks, None)
        if first is None:  # a finished run resumes without starting a cluster
            return
        ray, started = self._connect()
        try:
            yield from self._run(ray, itertools.chain([first], chunks))
        finally:
            if started:
                ray.shutdown()

    def actor_pids(self) -> dict[str, int]:
        """Process id of each live actor, by name (waits until they are up)."""
        import ray

        actors = list(self._actors)
        return dict(zip([a.name for a in actors], ray.get([a.pid_ref for a in actors])))

    def _connect(self):
        """Ray, initialised; and whether this executor started the cluster (and so stops it)."""
        import ray

        if ray.is_initialized():  # a caller (a notebook, a test) connected already
            return ray, False
        options: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": logging.WARNING,
                                   "log_to_driver": True}  # worker warnings show as on local workers
        if self.address is None:  # "local": a new cluster, never one found by `ray start` here
            options.update(num_cpus=self.workers, include_dashboard=False)
            # Ray runs workers at nice 15 by default; on a machine shared with other work that
            # halves their CPU share against --workers N processes (measured: docs/distributed.md)
            os.environ.setdefault("RAY_worker_niceness", "0")
        on_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=self.address or "local", **options)
        except ConnectionError as exc:
            auth = ("; a cluster with token authentication (Ray's default for `ray start` once "
                    "~/.ray/auth_token exists) also needs RAY_AUTH_MODE=token and its token in "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN" if "RAY_AUTH_MODE" not in os.environ else "")
            raise HarnessError(f"cannot connect to a Ray cluster at {self.address} ({_first_line(exc)}): {FIX}{auth}") from None
        if threading.current_thread() is threading.main_thread():
            # ray.init makes SIGTERM exit at once (sys.exit); the caller's own handling (the CLI's:
            # stop as on Ctrl-C, save the summary) stays
            signal.signal(signal.SIGTERM, on_sigterm)
        total = ray.cluster_resources().get("CPU", 0)
        if total < self.workers:
            log.warning("the Ray cluster has %g CPUs for %d workers: %d actor(s) wait for a free CPU",
                        total, self.workers, self.workers - int(total))
        return ray, self.address is None

    def _spawn(self, ray) -> _Actor:
        if self._remote_class is None:
            self._remote_class = ray.remote(num_cpus=1, max_restarts=0)(self.actor_class)
        self._spawned += 1
        name = f"ray-actor-{self._spawned}"
        handle = self._remote_class.remote(self.settings, name)
        return _Actor(name, handle, handle.pid.remote())

    def _run(self, ray, chunks: Iterator[list[WorkItem]]) -> Iterator[dict[str, Any]]:
        from ray.exceptions import RayActorError, RayError

        todo: deque[tuple[list[WorkItem], int]] = deque()  # retried chunks go first

        def give(actor: _Actor) -> None:
            """Start the actor on the next chunk, if any is left."""
            chunk, attempt = todo.popleft() if todo else (next(chunks, None), 1)
            actor.task = None if chunk is None else _Task(chunk, attempt, time.perf_counter(),
                                                          actor.handle.stream.remote(chunk))

        def replace(dead: _Actor, exc: BaseException) -> Iterator[dict[str, Any]]:
            """Replace a dead actor and retry the items of its chunk whose records did not
            arrive, once; after a second death they become error records."""
            task, fresh = dead.task, self._spawn(ray)
            self._actors[self._actors.index(dead)] = fresh
            _kill(ray, dead)
            reason = f"Ray actor {dead.name} died ({_first_line(exc)})"
            rest = unfinished(task.chunk, task.arrived)
            if rest and task.attempt < MAX_ATTEMPTS:
                log.warning("%s; retrying its %d episode(s) on %s", reason, len(rest), fresh.name)
                todo.appendleft((rest, task.attempt + 1))
            elif rest:
                log.warning("%s again; recording its %d episode(s) as errors", reason, len(rest))
                yield from died_records(rest, reason, task.submitted)
            give(fresh)

        self._actors = [self._spawn(ray) for _ in range(self.workers)]
        try:
            for actor in self._actors:
                give(actor)
            while any(a.task is not None for a in self._actors):
                running = {a.task.records: a for a in self._actors if a.task is not None}
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_S)
                for stream in ready:
                    actor = running[stream]
                    task = actor.task
                    try:
                        record = ray.get(next(stream))
                    except StopIteration:  # the chunk is done
                        give(actor)
                        continue
                    except RayActorError as exc:
                        if exc.actor_init_failed:  # it would fail on every replacement too
                            raise HarnessError(f"a Ray actor could not start ({_last_line(exc)}): every node needs "
                                               "this project and its extras installed in the same Python "
                                               "environment as the driver (docs/distributed.md)") from None
                        yield from replace(actor, exc)
                        continue
                    except RayError as exc:  # the call itself raised (run_batch never raises for an episode)
                        yield from failed_records(unfinished(task.chunk, task.arrived), exc, task.submitted)
                        give(actor)
                        continue
                    task.arrived.add(key_of(record))
                    yield record
        finally:  # done, Ctrl-C, or the caller stopped early: the actors go, with the episodes they were in
            for actor in self._actors:
                _kill(ray, actor)
            self._actors = []


def _kill(ray, actor: _Actor) -> None:
    try:
        ray.kill(actor.handle, no_restart=True)
    except Exception:  # already dead
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
