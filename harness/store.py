"""The run folder: append-only episodes.jsonl, the run identity, atomic summaries.

``episodes.jsonl`` gets one JSON line per finished episode, flushed and fsynced at once, so a
killed run loses only the episodes in flight. On reopening, a torn last line (kill -9 during a
write) is cut off and the run resumes after the last complete record.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from harness.episodes import record_key
from harness.errors import HarnessError

EPISODES = "episodes.jsonl"
RUN = "run.json"
RESULTS = "results.json"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(out: Path) -> None:
    """Fail early, with one line, if ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".probe.")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise HarnessError(f"cannot write to output folder {str(out)!r} ({exc.strerror or exc}): choose a writable --out") from None


class RunStore:
    def __init__(self, out: Path):
        self.out = Path(out)
        self.episodes_path = self.out / EPISODES

    # identity ------------------------------------------------------------------------
    def check(self, identity: dict[str, Any]) -> bool:
        """Raise if the folder holds a different run; True if it already holds this one."""
        path = self.out / RUN
        if path.exists():
            try:
                existing = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise HarnessError(f"{path} is unreadable ({exc}); it is not a harness run folder: choose another --out") from None
            if "checkpoints" not in existing:  # a run begun before fingerprints were recorded
                identity = {k: v for k, v in identity.items() if k != "checkpoints"}
            if existing != identity:
                diff = sorted(k for k in set(existing) | set(identity) if existing.get(k) != identity.get(k))
                if diff == ["checkpoints"]:
                    before, now = existing.get("checkpoints") or {}, identity.get("checkpoints") or {}
                    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
                    raise HarnessError(
                        f"{self.out} holds a run made with other weights ({', '.join(changed)} changed since it "
                        "began: re-trained or replaced); choose a new --out to evaluate these weights, or restore "
                        "the old ones to resume")
                raise HarnessError(
                    f"{self.out} holds a different run (differs in: {', '.join(diff)}); "
                    "re-run with the same arguments to resume, or choose a new --out"
                )
            return True
        if self.episodes_path.exists():
            raise HarnessError(f"{self.out} has {EPISODES} but no {RUN}; it is not a harness run folder: choose another --out")
        return False

    def claim(self, identity: dict[str, Any]) -> None:
        """Record what this run is; refuse to mix a different run into an existing folder."""
        if not self.check(identity):
            atomic_write_json(self.out / RUN, identity)

    # records -------------------------------------------------------------------------
    def load(self) -> list[dict[str, Any]]:
        """All complete records; repairs a torn last line left by a kill during a write."""
        if not self.episodes_path.exists():
            return []
        raw = self.episodes_path.read_bytes()
        good_end = raw.rfind(b"\n") + 1
        if good_end < len(raw):  # torn tail: drop the partial record (it was in flight)
            with open(self.episodes_path, "r+b") as f:
                f.truncate(good_end)
        records = []
        for n, line in enumerate(raw[:good_end].splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise HarnessError(f"{self.episodes_path} line {n} is not JSON; the file was edited by hand: restore it or choose a new --out") from None
        return dedupe(records)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.episodes_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def key_of(record: dict[str, Any]) -> tuple[str, str, str, int]:
    return record_key(record["policy"], record["backend"], record["env_id"], record["init_state"])


def dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first record per key (a duplicate can only come from a hand-merged file)."""
    seen, out = set(), []
    for r in records:
        k = key_of(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out
