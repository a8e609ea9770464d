"""Checkpoint folders: ``config.json`` (rebuilds the model) + ``model.safetensors`` (weights).

Written through a temporary folder and renamed, so an interrupted save never leaves a half
checkpoint under the final name. Loading says exactly what is absent, corrupt or mismatched.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from harness.errors import HarnessError

CONFIG = "config.json"
WM_FORMAT = "wm-harness-wm/1"  # a world model checkpoint (world_model.py writes it)
WEIGHTS = "model.safetensors"
T = TypeVar("T")


def save_checkpoint(folder: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                    extra_files: dict[str, Any] | None = None) -> Path:
    """Atomically (re)write ``folder``; ``extra_files`` are name -> object saved with torch.save
    (optimizer state for resuming).

    An existing ``folder`` is replaced only when it is empty or holds a checkpoint of the same
    ``config["format"]``; anything else (a run folder, another kind of checkpoint) is refused in
    one line and left untouched. Sub-folders of the old folder that this save does not write (a
    world model's ``judge/``, ``proprio/`` or ``distilled_decoder/`` add-ons) are carried over; they
    never leave the old folder until the new one is in place, so a save killed at any point loses
    none of them (the next save, or ``settle``, finishes the move)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    old = folder.with_name(folder.name + ".old")
    settle(folder)  # what an interrupted save left
    check_replaceable(folder, config.get("format"))
    if tmp.exists():  # only ever this save's own files
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    for name, obj in (extra_files or {}).items():
        torch.save(obj, tmp / name)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    settle(folder)
    return folder


def settle(folder: str | os.PathLike) -> None:
    """Finish a checkpoint swap that ``save_checkpoint`` began: the old folder's sub-folders that
    the new one lacks (add-ons) move into it and the old folder goes; with no new folder (a save
    killed between its two renames) the old one comes back whole."""
    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    if not old.is_dir():
        return
    if not folder.exists():
        old.rename(folder)
        return
    for entry in old.iterdir():
        if entry.is_dir() and not (folder / entry.name).exists():
            entry.rename(folder / entry.name)
    shutil.rmtree(old)


def check_replaceable(folder: Path, fmt: Any) -> None:
    """One line, and nothing touched, unless ``folder`` is absent, empty or a ``fmt`` checkpoint."""
    if not folder.exists():
        return
    fix = "choose another output folder (--out) or remove it first"
    if not folder.is_dir():
        raise HarnessError(f"cannot save a {fmt} checkpoint to {folder}: it is a file; {fix}")
    if not any(folder.iterdir()):
        return
    try:
        got = json.loads((folder / CONFIG).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        got = None
    if got != fmt:
        what = f"a {got} checkpoint" if got else "not a checkpoint folder"
        raise HarnessError(f"cannot save a {fmt} checkpoint to {folder}: the folder exists and is {what}, "
                           f"which saving would replace; {fix}")


def load_checkpoint(folder: str | os.PathLike, what: str, fmt: str, hint: str = "",
                    weights: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, tensors) of a checkpoint folder, or one clear HarnessError line. ``weights=False``
    checks the weights file's header (names, shapes, offsets against the file size: a torn or
    foreign file fails the same way) without reading the tensors, and returns no tensors."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    fix = f" {hint}" if hint else ""
    if not folder.is_dir():
        where = "" if folder.is_absolute() else f" (a relative path, read from the current directory {Path.cwd()})"
        raise HarnessError(f"{what} checkpoint not found: {folder} is not a folder{where}.{fix}")
    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise HarnessError(f"{what} checkpoint {folder} lacks {', '.join(missing)}: it is incomplete "
                           f"or not a checkpoint folder.{fix}")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HarnessError(f"{what} checkpoint {folder / CONFIG} is not valid JSON ({e.msg if hasattr(e, 'msg') else e}); "
                           f"re-save or re-train it.{fix}") from None
    if not isinstance(config, dict) or config.get("format") != fmt:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise HarnessError(f"{what} checkpoint {folder} has format {got!r}, expected {fmt!r}: "
                           f"it is a different kind of checkpoint.{fix}")
    try:
        if not weights:
            with safe_open(str(folder / WEIGHTS), "pt") as f:
                f.keys()
            return config, {}
        tensors = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise HarnessError(f"{what} checkpoint {folder / WEIGHTS} is corrupt ({first}); "
                           f"re-save or re-train it.{fix}") from None
    return config, tensors


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    """Load ``prefix``-ed tensors into ``module``; a missing key or shape mismatch is one line."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {prefix}{missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {prefix}{unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {prefix}{k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise HarnessError(f"checkpoint {where} does not match its config: {'; '.join(parts)} tensors; "
                           f"the weights and config.json come from different models")
    module.load_state_dict(state)


def tensor_fingerprint(spec: dict[str, Any], tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> str:
    """A short hash of a spec and the tensors whose names start with one of ``prefixes``: what an
    add-on (a distilled decoder, a proprioception readout) was made from, so that it is refused by
    a world model it was not made for."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for key in sorted(k for k in tensors if k.startswith(prefixes)):
        h.update(key.encode())
        h.update(tensors[key].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_addon(world_model, folder: str | os.PathLike | None, subdir: str, what: str, fmt: str, fingerprint: str,
               hint: Callable[[str], str], build: Callable[[Path, dict[str, Any], dict[str, torch.Tensor]], T]) -> T:
    """An add-on kept beside a world model's checkpoint (``<checkpoint>/<subdir>`` unless
    ``folder`` is given): a distilled decoder, a proprioception readout. ``build(folder, config,
    tensors)`` makes it. One clear line ending in ``hint(where it was looked for)`` when it is
    absent, torn, made for another world model (its config's ``fingerprint`` is not
    ``fingerprint``) or inconsistent (``build`` raised KeyError, TypeError or ValueError)."""
    base = getattr(world_model, "folder", None)
    folder = Path(folder) if folder is not None else (None if base is None else Path(base) / subdir)
    name = world_model.info.get("name", "the world model")
    fix = hint(str(folder) if folder is not None else f"<checkpoint>/{subdir}")
    if folder is None or not (folder / CONFIG).is_file():
        raise HarnessError(f"world model {name} has no {what}{f' in {folder}' if folder is not None else ''}. {fix}")
    config, tensors = load_checkpoint(folder, what, fmt, fix)
    if config.get("fingerprint") != fingerprint:
        raise HarnessError(f"{what} {folder} was made for another world model (fingerprint "
                           f"{config.get('fingerprint')!r}, this one {fingerprint!r}). {fix}")
    try:
        return build(folder, config, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise HarnessError(f"{what} {folder}/{CONFIG} is inconsistent ({type(e).__name__}: {e}). {fix}") from None


TRAIN_STATE = "train_state.pt"  # a training run's resume state, next to its checkpoint


def load_train_state(out: Path, identity: dict[str, Any], command: str, extend_hint: str = "") -> dict[str, Any] | None:
    """The resume state in ``out`` when it holds a run of ``command`` with the same ``identity``;
    None when ``out`` is absent or empty. A folder holding something else, an unreadable state or
    a run with other settings is refused (one line) rather than overwritten."""
    if not out.exists():
        return None
    if not out.is_dir() or (any(out.iterdir()) and not (out / TRAIN_STATE).is_file()):
        raise HarnessError(f"--out {out} exists and is not a {command} folder; choose a new folder")
    if not (out / TRAIN_STATE).is_file():
        return None
    try:
        state = torch.load(out / TRAIN_STATE, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable state is the same user problem
        raise HarnessError(f"{out / TRAIN_STATE} is unreadable ({type(e).__name__}); remove {out} to start over") from None
    if state.get("identity") != identity:
        diff = sorted(k for k, v in identity.items() if state.get("identity", {}).get(k) != v)
        raise HarnessError(f"--out {out} holds a run with different settings ({', '.join(diff)}); use the same "
                           f"settings to resume{extend_hint}, or a new --out folder")
    return state
