"""Executors run work items and stream records back as episodes finish.

``local``: in this process with one worker, or N worker processes (spawn/forkserver, one
simulator per process; each process builds its own renderer, so no GL context is shared).
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from harness.episodes import WorkItem
from harness.registry import Registry
from harness.runner import EpisodeWorker, RunSettings

EXECUTORS: Registry = Registry("executor")

_WORKER: EpisodeWorker | None = None


def _init_worker(settings: RunSettings) -> None:
    global _WORKER
    import logging

    logging.basicConfig(level=logging.WARNING)
    _WORKER = EpisodeWorker(settings)


def _run_in_worker(item: WorkItem) -> list[dict[str, Any]]:
    assert _WORKER is not None
    records = _WORKER.run(item)
    for record in records:
        record["worker"] = mp.current_process().name
    return records


@EXECUTORS.register("local")
class LocalExecutor:
    """Episodes in this process (workers=1) or in N local worker processes."""

    def __init__(self, settings: RunSettings, workers: int = 1):
        self.settings = settings
        self.workers = workers

    def map(self, items: Iterable[WorkItem]) -> Iterator[dict[str, Any]]:
        if self.workers <= 1:
            worker = EpisodeWorker(self.settings)
            try:
                for item in items:
                    for record in worker.run(item):
                        record["worker"] = "main"
                        yield record
            finally:
                worker.close()
            return
        yield from self._map_processes(list(items))

    def _map_processes(self, items: list[WorkItem]) -> Iterator[dict[str, Any]]:
        method = "forkserver" if sys.platform.startswith("linux") else "spawn"
        pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(method),
                                   initializer=_init_worker, initargs=(self.settings,))
        pending: set[Future] = set()
        todo = iter(items)
        try:
            # Keep only a few items in flight so a kill loses little and order stays near input order.
            for item in todo:
                pending.add(pool.submit(_run_in_worker, item))
                if len(pending) >= 2 * self.workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield from fut.result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.add(pool.submit(_run_in_worker, nxt))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
