"""The run folder: append-only episodes.jsonl, the run identity, atomic summaries.

``episodes.jsonl`` gets one JSON line per finished episode, flushed and fsynced at once, so a
killed run loses only the episodes in flight. Reading never writes; before a run appends, a torn
last line (kill -9 during a write) is cut off and the run resumes after the last complete record.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.run.episodes import record_key

log = logging.getLogger(__name__)

EPISODES = "episodes.jsonl"
RUN = "run.json"
RESULTS = "results.json"
LOCK = ".lock"
RECORD_KEYS = ("policy", "backend", "env_id", "init_state", "outcome")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an ordinary file is readable by others
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


def _short(value: Any, width: int = 60) -> str:
    """JSON of ``value``, its middle left out when long (paths differ at their ends)."""
    text = json.dumps(value)
    if len(text) <= width:
        return text
    head = (width - 3) // 3
    return text[:head] + "..." + text[len(text) - (width - 3 - head):]


def _change(before: Any, now: Any) -> str:
    """How a setting of a run differs from this command's, short enough for one line: the items
    removed and added for a list, the keys that differ for a mapping."""
    if isinstance(before, list) and isinstance(now, list):
        removed, added = [x for x in before if x not in now], [x for x in now if x not in before]
        if not removed and not added:
            return "the same items in another order"
        return ", ".join(part for part in (f"{_short(removed)} there only" if removed else "",
                                           f"{_short(added)} now only" if added else "") if part)
    if isinstance(before, dict) and isinstance(now, dict):
        keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        return ", ".join(f"{k} {_short(before.get(k), 30)} there, {_short(now.get(k), 30)} now" for k in keys)
    return f"{_short(before)} there, {_short(now)} now"


def check_output_file(path: Path, flag: str = "--out") -> None:
    """Fail early, with one line, if the file ``path`` could not be written (a folder is there, or
    its folder cannot be created or written), before any work is done for it."""
    path = Path(path)
    if path.is_dir():
        raise HarnessError(f"{flag} {path} is a folder; give a file path, e.g. {path / 'result.json'}")
    try:
        check_writable(path.parent)
    except HarnessError:
        raise HarnessError(f"cannot write {flag} {path}: its folder {path.parent} cannot be created or written; "
                           "choose a writable path") from None


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
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise HarnessError(f"{path} is unreadable ({exc}); it is not a harness run folder: choose another --out") from None
            if not isinstance(existing, dict):
                raise HarnessError(f"{path} holds a JSON {type(existing).__name__}, not a run's settings; it is not a "
                                   "harness run folder: choose another --out")
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
                shown = "; ".join(f"{k}: {_change(existing.get(k), identity.get(k))}" for k in diff)
                raise HarnessError(
                    f"{self.out} holds a different run (differs in: {shown}); "
                    "re-run with the same arguments to resume, or choose a new --out"
                )
            return True
        if self.episodes_path.exists():
            raise HarnessError(f"{self.out} has {EPISODES} but no {RUN}; it is not a harness run folder: choose another --out")
        return False

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for one writer (an advisory lock on ``.lock``, released when the
        process ends, however it ends); a second writer gets one line instead of interleaving."""
        import fcntl

        self.out.mkdir(parents=True, exist_ok=True)
        f = open(self.out / LOCK, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            f.close()
            raise HarnessError(f"another `harness eval` is writing to {self.out}: wait for it to finish (re-running "
                               "the same command then resumes) or choose another --out") from None
        except OSError as exc:  # a filesystem without flock (some NFS or Lustre mounts): run unguarded
            log.warning("cannot lock %s (%s): run only one eval into this folder at a time", self.out,
                        exc.strerror or exc)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def claim(self, identity: dict[str, Any]) -> None:
        """Record what this run is; refuse to mix a different run into an existing folder."""
        if not self.check(identity):
            atomic_write_json(self.out / RUN, identity)

    def previous_summary(self) -> dict[str, Any] | None:
        """results.json as the run's last invocation left it; None when absent or unreadable
        (the run writes a new one)."""
        try:
            summary = json.loads((self.out / RESULTS).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return summary if isinstance(summary, dict) else None

    # records -------------------------------------------------------------------------
    def load(self) -> list[dict[str, Any]]:
        """All complete records, deduplicated. Reading never writes: a last line without its newline
        is kept when it is a whole record and skipped when it is torn (a kill during a write, or a
        live run's record half-written); ``repair`` settles it before a run appends."""
        return dedupe(self._read()[0])

    def repair(self) -> list[dict[str, Any]]:
        """Before appending: cut a torn last line off; give a whole last record its newline.
        Returns what ``load`` would (the file is read once)."""
        records, good_end, size, tail_whole = self._read()
        if good_end < size:
            if tail_whole:
                with open(self.episodes_path, "ab") as f:
                    f.write(b"\n")
            else:
                with open(self.episodes_path, "r+b") as f:
                    f.truncate(good_end)
        return dedupe(records)

    def _read(self) -> tuple[list[dict[str, Any]], int, int, bool]:
        """(records, end of the last newline-terminated line, size of the file, whether the
        unterminated tail is a whole record)."""
        if not self.episodes_path.exists():
            return [], 0, 0, False
        raw = self.episodes_path.read_bytes()
        good_end = raw.rfind(b"\n") + 1
        records = [self._record(line, n) for n, line in enumerate(raw[:good_end].splitlines(), 1) if line.strip()]
        tail, tail_whole = raw[good_end:], False
        if tail.strip():
            try:
                last = json.loads(tail)
                tail_whole = isinstance(last, dict) and all(k in last for k in RECORD_KEYS)
            except (json.JSONDecodeError, UnicodeDecodeError):
                pass
            if tail_whole:
                records.append(last)
        return records, good_end, len(raw), tail_whole

    def _record(self, line: bytes, n: int) -> dict[str, Any]:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HarnessError(f"{self.episodes_path} line {n} is not JSON; the file was edited by hand: "
                               "restore it or choose a new --out") from None
        if not isinstance(record, dict) or any(k not in record for k in RECORD_KEYS):
            raise HarnessError(f"{self.episodes_path} line {n} is not an episode record (it lacks "
                               f"{', '.join(RECORD_KEYS)}); the file was edited by hand: restore it or choose "
                               "a new --out")
        return record

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
