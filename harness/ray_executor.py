"""Ray executor: episodes fan out to Ray actors on a local or remote cluster.

Each actor owns one ``EpisodeWorker`` (its own simulator, policies and world model), so an
actor produces exactly the records a local worker process would; world-model episodes are
batched per actor through the chunks of ``chunked``. The driver sends each actor one chunk at a
time (``IN_FLIGHT_PER_ACTOR``) and yields records as chunks finish, so the caller appends them to
``episodes.jsonl`` the moment they arrive.

An actor that dies (its process killed, a simulator segfault, its node lost) is replaced and
the chunk it was running is retried once; a second death turns that chunk into ``error``
records. One chunk per actor keeps that attribution certain: with a second chunk queued, an actor
killed just after finishing one can lose that chunk's result on the way to the driver, and the
driver could then not tell the finished chunk from the one that killed it (seen under load: the
killer ran again uncharged and an innocent chunk was recorded as an error). The driver's round
trip between chunks costs milliseconds against episodes of seconds.

Workers import this project: on a local cluster they run in the driver's environment; on a
remote cluster every node needs the project installed (``pip install -e ".[distributed,...]"``)
at the same Ray and Python versions, and any path in the run (``--out`` for videos,
checkpoints, datasets) must be visible at the same path on every node. See docs/distributed.md.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.episodes import WorkItem
from harness.errors import HarnessError, require_module
from harness.executors import MAX_ATTEMPTS, chunk_size, chunked, died_records
from harness.runner import EpisodeWorker, RunSettings, failed_records

log = logging.getLogger(__name__)

IN_FLIGHT_PER_ACTOR = 1  # one chunk per actor: a death is charged to the chunk that caused it (see above)
CONNECT_TIMEOUT_S = 5.0  # for the reachability check of --ray-address HOST:PORT
WAIT_S = 1.0  # ray.wait in slices, so Ctrl-C reaches the driver promptly
FIX = ("start a cluster with `ray start --head` and pass --ray-address HEAD_IP:6379, use "
       "--ray-address auto on a node of a running cluster, or leave --ray-address out to start a "
       "local cluster")


class EpisodeActor:
    """The body of one Ray actor: an EpisodeWorker running the chunks sent to it, in order."""

    def __init__(self, settings: RunSettings, name: str):
        from harness.allocator import keep_freed_memory

        logging.basicConfig(level=logging.WARNING)
        keep_freed_memory()  # as local workers do
        self.worker = EpisodeWorker(settings)
        self.name = name

    def pid(self) -> int:
        return os.getpid()

    def run_batch(self, chunk: list[WorkItem]) -> list[dict[str, Any]]:
        records = self.worker.run_batch(chunk)
        for record in records:
            record["worker"] = self.name
        return records


@dataclass
class _Actor:
    name: str
    handle: Any
    pid_ref: Any  # the actor's first call: resolves once the actor process is up
    in_flight: deque = field(default_factory=deque)  # its chunks' object refs, in submission order


@dataclass
class _Task:
    chunk: list[WorkItem]
    attempt: int
    actor: _Actor
    submitted: float


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
        try:
            ray.init(address=self.address or "local", **options)
        except ConnectionError as exc:
            auth = ("; a cluster with token authentication (Ray's default for `ray start` once "
                    "~/.ray/auth_token exists) also needs RAY_AUTH_MODE=token and its token in "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN" if "RAY_AUTH_MODE" not in os.environ else "")
            raise HarnessError(f"cannot connect to a Ray cluster at {self.address} ({_first_line(exc)}): {FIX}{auth}") from None
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
        from ray.exceptions import GetTimeoutError, RayActorError, RayError

        todo: deque[tuple[list[WorkItem], int]] = deque()  # retried and resubmitted chunks go first
        tasks: dict[Any, _Task] = {}

        def next_task() -> tuple[list[WorkItem], int] | None:
            if todo:
                return todo.popleft()
            chunk = next(chunks, None)
            return None if chunk is None else (chunk, 1)

        def fill(actor: _Actor, depth: int = IN_FLIGHT_PER_ACTOR) -> None:
            while len(actor.in_flight) < depth:
                task = next_task()
                if task is None:
                    return
                ref = actor.handle.run_batch.remote(task[0])
                actor.in_flight.append(ref)
                tasks[ref] = _Task(task[0], task[1], actor, time.perf_counter())

        def replace(dead: _Actor, exc: BaseException) -> list[dict[str, Any]]:
            """Replace a dead actor; retry the chunk it was running (resubmit any queued behind
            it, were IN_FLIGHT_PER_ACTOR raised) and keep what it finished before dying."""
            self._actors[self._actors.index(dead)] = fresh = self._spawn(ray)
            _kill(ray, dead)
            reason = f"Ray actor {dead.name} died ({_first_line(exc)})"
            out: list[dict[str, Any]] = []
            retry: list[tuple[list[WorkItem], int]] = []
            charged = False
            for ref in dead.in_flight:
                task = tasks.pop(ref)
                try:
                    out.extend(ray.get(ref, timeout=0))  # finished before the death
                    continue
                except (RayActorError, GetTimeoutError):  # died with it, or not settled yet
                    pass
                except RayError as err:  # finished with an error of its own
                    out.extend(failed_records(task.chunk, err, task.submitted))
                    continue
                if charged:  # only queued: it never started
                    retry.append((task.chunk, task.attempt))
                elif task.attempt < MAX_ATTEMPTS:
                    charged = True
                    log.warning("%s; retrying its %d episode(s) on %s", reason, len(task.chunk), fresh.name)
                    retry.append((task.chunk, task.attempt + 1))
                else:
                    charged = True
                    log.warning("%s again; recording its %d episode(s) as errors", reason, len(task.chunk))
                    out.extend(died_records(task.chunk, reason, task.submitted))
            dead.in_flight.clear()
            todo.extendleft(reversed(retry))
            fill(fresh)
            return out

        self._actors = [self._spawn(ray) for _ in range(self.workers)]
        try:
            for depth in range(1, IN_FLIGHT_PER_ACTOR + 1):  # round-robin: every actor gets work first
                for actor in self._actors:
                    fill(actor, depth)
            while tasks:
                ready, _ = ray.wait(list(tasks), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    task = tasks.get(ref)
                    if task is None:  # already settled with its dead actor
                        continue
                    actor = task.actor
                    try:
                        records = ray.get(ref)
                    except RayActorError as exc:
                        if exc.actor_init_failed:  # it would fail on every replacement too
                            raise HarnessError(f"a Ray actor could not start ({_last_line(exc)}): every node needs "
                                               "this project and its extras installed in the same Python "
                                               "environment as the driver (docs/distributed.md)") from None
                        yield from replace(actor, exc)
                        continue
                    except RayError as exc:  # the call itself raised (run_batch never raises for an episode)
                        records = failed_records(task.chunk, exc, task.submitted)
                    del tasks[ref]
                    actor.in_flight.remove(ref)
                    fill(actor)
                    yield from records
        finally:  # done, Ctrl-C, or the caller stopped early: in-flight work is cancelled
            for ref in tasks:
                try:
                    ray.cancel(ref)
                except Exception:  # the actor may be gone already
                    pass
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
