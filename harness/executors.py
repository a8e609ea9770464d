"""Executors run work items and stream records back as episodes finish.

``local``: in this process with one worker, or N worker processes (forkserver/spawn, one
simulator per process; each process builds its own renderer, so no GL context is shared).
A worker process that dies (a simulator segfault, the OOM killer, ``kill -9``) is replaced and
its chunk of episodes retried once on the new process; if it dies again, those episodes become
``error`` records and the run goes on. ``ray`` (``harness/ray_executor.py``): Ray actors.

Executors hand workers chunks of items (``chunked``): with ``--wm-batch B`` a chunk of B
episodes has its world-model rollouts advanced together in one batched call per step.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from harness.allocator import keep_freed_memory
from harness.episodes import WorkItem
from harness.errors import HarnessError
from harness.registry import Registry
from harness.runner import EpisodeWorker, RunSettings, failed_records

EXECUTORS: Registry = Registry("executor")
EXECUTORS.register("ray", "harness.ray_executor:RayExecutor",
                   description="Ray actors on a local or remote cluster (--ray-address; the distributed extra)")

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # a chunk whose worker died is retried once on a fresh worker


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


def _worker_main(conn, settings: RunSettings, factory: type[EpisodeWorker], workers: int) -> None:
    """A worker process: build its worker, then run the chunks the parent sends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    share_threads(workers, settings.threads)
    keep_freed_memory()
    logging.basicConfig(level=logging.WARNING)
    worker = factory(settings)
    name = mp.current_process().name
    try:
        while True:
            try:
                chunk = conn.recv()
            except EOFError:  # the parent is gone
                return
            if chunk is None:
                return
            records = worker.run_batch(chunk)
            for record in records:
                record["worker"] = name
            conn.send(records)
    finally:
        worker.close()


class _Process:
    """One worker process, its pipe, and the chunk it is running."""

    def __init__(self, ctx, settings: RunSettings, factory: type[EpisodeWorker], name: str, workers: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, settings, factory, workers), name=name,
                                daemon=True)
        self.proc.start()
        child.close()
        self.chunk: list[WorkItem] | None = None
        self.attempt = 0
        self.started = 0.0

    def give(self, chunk: list[WorkItem], attempt: int) -> None:
        self.chunk, self.attempt, self.started = chunk, attempt, time.perf_counter()
        self.conn.send(chunk)

    def stop(self, timeout: float = 5.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1.0)
        self.conn.close()


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
                    records = None
                    if p.conn in ready:
                        try:
                            records = p.conn.recv()
                        except (EOFError, OSError):
                            records = None
                    if records is not None:
                        p.chunk = None
                        yield from records
                    else:  # the process died with this chunk
                        chunk, attempt, started = p.chunk, p.attempt, p.started
                        p.proc.join(1.0)
                        reason = f"worker process {p.proc.name} died (exit code {p.proc.exitcode})"
                        p.chunk = None
                        p.stop(0.5)
                        pool[i] = p = spawn()
                        if attempt < MAX_ATTEMPTS:
                            log.warning("%s; retrying its %d episode(s) on %s", reason, len(chunk), p.proc.name)
                            todo.appendleft((chunk, attempt + 1))
                        else:
                            log.warning("%s again; recording its %d episode(s) as errors", reason, len(chunk))
                            yield from died_records(chunk, reason, started)
                    if p.chunk is None:
                        task = next_task()
                        if task is not None:
                            p.give(*task)
        finally:
            for p in pool:
                p.stop(timeout=0.5 if any(q.chunk is not None for q in pool) else 5.0)
