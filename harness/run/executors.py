"""Executors run work items and stream records back as episodes finish.

``local``: in this process with one worker, or N worker processes (forkserver/spawn, one
simulator per process; each process builds its own renderer, so no GL context is shared).
A worker process that dies (a simulator segfault, the OOM killer, ``kill -9``) is replaced and
the episodes of its chunk whose records had not arrived are retried once on the new process; if
it dies again, those episodes become ``error`` records and the run goes on. ``ray``
(``harness/run/ray_executor.py``): Ray actors.

Executors hand workers chunks of items (``chunked``): with ``--wm-batch B`` a chunk of B
episodes has its world-model rollouts advanced together in one batched call per step. Whatever
the chunk size, a worker sends each record the moment its episode ends.

Stopping: when the caller stops reading (Ctrl-C, SIGTERM, an error), worker processes in the
middle of an episode are terminated at once, since their episodes are re-run on resume anyway.
A worker whose driver is gone (``kill -9``, a crash) exits by itself within ``WATCH_S``.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from harness.errors import HarnessError
from harness.registry import Registry
from harness.run.allocator import keep_freed_memory
from harness.run.episodes import WorkItem
from harness.run.runner import EpisodeWorker, RunSettings, failed_records
from harness.run.store import key_of

EXECUTORS: Registry = Registry("executor")
EXECUTORS.register("ray", "harness.run.ray_executor:RayExecutor",
                   description="Ray actors on a local or remote cluster (--ray-address; the distributed extra)")

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # what a chunk whose worker died had left to do is retried once on a fresh worker
WATCH_S = 1.0  # how often a worker process checks that its driver is still there
STOP_S = 2.0  # how long stopping waits for worker processes to end before killing them
CHUNK_DONE = None  # what a worker process sends after the last record of a chunk
GONE = object()  # what the driver receives from a worker process that is gone


class WorkerDied(RuntimeError):
    """The worker process (or actor) running an episode died."""


def chunk_size(settings: RunSettings) -> int:
    """Items per chunk: world-model episodes are batched ``wm_batch`` at a time; simulator-only
    runs go one item at a time, which balances workers best."""
    return max(1, settings.wm_batch) if settings.wm else 1


def chunked(items: Iterable[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    """Consecutive items in lists of at most ``size``."""
    chunk: list[WorkItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def died_records(chunk: list[WorkItem], reason: str, start: float) -> list[dict[str, Any]]:
    """'error' records for a chunk whose worker died on every attempt."""
    exc = WorkerDied(f"{reason} on each of {MAX_ATTEMPTS} attempts running this episode")
    return failed_records(chunk, exc, start)


def share_threads(workers: int, threads: int | None = None) -> int:
    """Give this process its share of the CPUs for torch's intra-op threads (``threads`` when
    given): N worker processes each running torch on every core would oversubscribe the machine
    N times over, and tiny world-model calls slow down many times when a thread waits on a busy core."""
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, workers))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:  # read by torch when it loads
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    return threads


def unfinished(chunk: list[WorkItem], arrived: set) -> list[WorkItem]:
    """The items of ``chunk`` with records still to come (keys not in ``arrived``), each for its
    missing backends only: what a retry runs, so no record is written twice."""
    out = []
    for item in chunk:
        missing = tuple(b for b, key in zip(item.backends, item.keys) if key not in arrived)
        if missing:
            out.append(dataclasses.replace(item, backends=missing))
    return out


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_driver(conn) -> None:
    """End this worker process within ``WATCH_S`` of its driver's end, even in the middle of a
    long episode: nothing it finishes could be saved any more. On Linux the kernel kills it when
    its parent goes (the forkserver, which itself ends with the driver); on every system a
    thread watches the driver's end of ``conn`` closing and this process being re-parented."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl in this libc: the thread below still watches
            pass
    parent = os.getppid()
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLHUP)  # not POLLIN: the main thread reads the messages

    def watch() -> None:
        while True:
            hung_up = poller.poll(WATCH_S * 1000)
            if hung_up or os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="watch-driver", daemon=True).start()


def _worker_main(conn, settings: RunSettings, factory: type[EpisodeWorker], workers: int) -> None:
    """A worker process: build its worker, then run the chunks the parent sends, sending each
    record as its episode ends and ``CHUNK_DONE`` after a chunk's last one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    exit_with_driver(conn)
    share_threads(workers, settings.threads)
    keep_freed_memory()
    logging.basicConfig(level=logging.WARNING)
    worker = factory(settings)
    name = mp.current_process().name
    try:
        while True:
            chunk = conn.recv()
            if chunk is None:  # the driver asks it to exit
                return
            for record in worker.run_batch(chunk):
                record["worker"] = name
                conn.send(record)
            conn.send(CHUNK_DONE)
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent is gone: no one to send records to
        return
    finally:
        worker.close()


class _Process:
    """One worker process, its pipe, the chunk it is running and the records of it that arrived."""

    def __init__(self, ctx, settings: RunSettings, factory: type[EpisodeWorker], name: str, workers: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, settings, factory, workers), name=name,
                                daemon=True)
        self.proc.start()
        child.close()
        self.chunk: list[WorkItem] | None = None
        self.arrived: set = set()
        self.attempt = 0
        self.started = 0.0

    def give(self, chunk: list[WorkItem], attempt: int) -> None:
        self.chunk, self.arrived, self.attempt, self.started = chunk, set(), attempt, time.perf_counter()
        self.conn.send(chunk)

    def receive(self) -> Any:
        """The next message from the worker (a record or ``CHUNK_DONE``), or ``GONE`` when its
        process is."""
        try:
            if self.conn.poll():  # a message, or the end of the pipe
                return self.conn.recv()
        except (EOFError, OSError):
            pass
        return GONE


def stop_processes(processes: list[_Process]) -> None:
    """End every worker process within ``STOP_S``: an idle one is asked to exit (it closes its
    simulator), one in the middle of an episode is terminated at once (the episode is re-run on
    resume); any still there at the deadline is killed."""
    for p in processes:
        try:
            if p.chunk is None:
                p.conn.send(None)
            else:
                p.proc.terminate()
        except (OSError, ValueError):  # its pipe or process is gone already
            pass
    deadline = time.monotonic() + STOP_S
    for p in processes:
        p.proc.join(max(0.0, deadline - time.monotonic()))
        if p.proc.is_alive():
            p.proc.kill()
            p.proc.join(1.0)
        p.conn.close()


@EXECUTORS.register("local")
class LocalExecutor:
    """Episodes in this process (workers=1) or in N local worker processes."""

    def __init__(self, settings: RunSettings, workers: int = 1, worker: type[EpisodeWorker] = EpisodeWorker):
        self.check(workers)
        self.settings = settings
        self.workers = workers
        self.factory = worker  # what runs the chunks (an importable class, for the worker processes)

    @staticmethod
    def check(workers: int) -> None:
        """Refuse more worker processes than this machine can run (each holds a simulator)."""
        limit = 4 * (os.cpu_count() or 1)
        if workers > limit:
            raise HarnessError(f"--workers {workers} is more than this machine's {os.cpu_count()} CPUs can run "
                               f"(at most {limit} local worker processes): use --workers {os.cpu_count()}, or "
                               f"--executor ray to spread episodes over a cluster")

    def map(self, items: Iterable[WorkItem]) -> Iterator[dict[str, Any]]:
        chunks = chunked(items, chunk_size(self.settings))
        if self.workers <= 1:
            if self.settings.threads:  # otherwise this process keeps torch's own setting
                share_threads(1, self.settings.threads)
            worker = self.factory(self.settings)
            try:
                for chunk in chunks:
                    for record in worker.run_batch(chunk):
                        record["worker"] = "main"
                        yield record
            finally:
                worker.close()
            return
        chunks = list(chunks)
        yield from self._map_processes(iter(chunks), min(self.workers, len(chunks)))

    def _map_processes(self, chunks: Iterator[list[WorkItem]], processes: int) -> Iterator[dict[str, Any]]:
        ctx = mp.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
        todo: deque[tuple[list[WorkItem], int]] = deque()  # retries go first
        spawned = 0

        def spawn() -> _Process:
            nonlocal spawned
            spawned += 1
            return _Process(ctx, self.settings, self.factory, f"worker-{spawned}", processes)

        def next_task() -> tuple[list[WorkItem], int] | None:
            if todo:
                return todo.popleft()
            chunk = next(chunks, None)
            return None if chunk is None else (chunk, 1)

        pool = [spawn() for _ in range(processes)]  # never more processes than chunks
        try:
            for p in pool:
                task = next_task()
                if task is not None:
                    p.give(*task)
            while any(p.chunk is not None for p in pool):
                busy = [p for p in pool if p.chunk is not None]
                ready = set(wait([p.conn for p in busy] + [p.proc.sentinel for p in busy]))
                for i, p in enumerate(pool):
                    if p.chunk is None or (p.conn not in ready and p.proc.sentinel not in ready):
                        continue
                    message = p.receive()
                    if isinstance(message, dict):  # a record: the chunk goes on
                        p.arrived.add(key_of(message))
                        yield message
                        continue
                    if message is GONE:
                        yield from self._replace(pool, i, spawn, todo)
                    else:  # CHUNK_DONE
                        p.chunk = None
                    task = next_task()
                    if task is not None:
                        pool[i].give(*task)
        finally:
            stop_processes(pool)

    @staticmethod
    def _replace(pool: list[_Process], i: int, spawn, todo: deque) -> Iterator[dict[str, Any]]:
        """Replace the dead process ``pool[i]``: retry the items of its chunk whose records did not
        arrive, once; after a second death they become ``error`` records."""
        p = pool[i]
        rest, attempt, started = unfinished(p.chunk, p.arrived), p.attempt, p.started
        p.proc.join(1.0)
        reason = f"worker process {p.proc.name} died (exit code {p.proc.exitcode})"
        p.chunk = None
        stop_processes([p])
        pool[i] = spawn()
        if not rest:  # it died after its chunk's last record
            return
        if attempt < MAX_ATTEMPTS:
            log.warning("%s; retrying its %d episode(s) on %s", reason, len(rest), pool[i].proc.name)
            todo.appendleft((rest, attempt + 1))
        else:
            log.warning("%s again; recording its %d episode(s) as errors", reason, len(rest))
            yield from died_records(rest, reason, started)
