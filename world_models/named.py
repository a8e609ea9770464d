"""Named world models: ``configs/world_models/<name>.yaml`` (how to build and train it) plus a
checkpoint folder. Names follow ``<encoder>_dit_<size>``.

A checkpoint is looked for, in order, at ``--wm-checkpoint DIR``; ``$WM_HARNESS_HOME/checkpoints/<name>``
(default ``~/.cache/wm-harness/checkpoints/<name>``, where ``harness train-wm --wm <name>`` writes);
and ``checkpoints/<name>`` in the repository (the embedded defaults that ship with it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs" / "world_models"
SHIPPED_DIR = REPO_ROOT / "checkpoints"


def harness_home() -> Path:
    return Path(os.environ.get("WM_HARNESS_HOME", Path.home() / ".cache" / "wm-harness"))


def default_checkpoint(name: str) -> Path:
    return harness_home() / "checkpoints" / name


def config_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def read_config(name: str) -> dict[str, Any]:
    from . import WORLD_MODELS

    files = config_files()
    if name not in files:
        raise HarnessError(WORLD_MODELS.unknown_message(name))
    data = yaml.safe_load(files[name].read_text()) or {}
    if not isinstance(data, dict) or data.get("name", name) != name:
        raise HarnessError(f"{files[name]} must be a mapping whose name is {name!r}")
    return data


def find_checkpoint(name: str, checkpoint: str | os.PathLike | None = None) -> Path:
    if checkpoint is not None:
        return Path(checkpoint)
    for folder in (default_checkpoint(name), SHIPPED_DIR / name):
        if (folder / "config.json").is_file():
            return folder
    return default_checkpoint(name)


def check_world_model(name: str, checkpoint: str | os.PathLike | None = None,
                      flag: str = "--wm-checkpoint DIR") -> tuple[Path, dict[str, Any]]:
    """(checkpoint folder, its config) without loading the weights: an unknown name, or an absent,
    torn or foreign checkpoint, fails here in one line rather than in every episode."""
    from harness.errors import require_module

    require_module("torch", "PyTorch (world models)", "models")
    require_module("safetensors", "safetensors (world-model checkpoints)", "models")
    from .checkpoint import WM_FORMAT, load_checkpoint

    read_config(name)  # an unknown name lists the known ones
    folder = find_checkpoint(name, checkpoint)
    config, _ = load_checkpoint(folder, "world model", WM_FORMAT, f"Train it with `harness train-wm --wm {name} "
                                f"--data DATASET` or pass {flag}.", weights=False)
    info = config.get("info")
    if not isinstance(info, dict) or not isinstance(info.get("camera"), str):
        raise HarnessError(f"world model checkpoint {folder}/config.json names no camera (info.camera): restore "
                           f"the original config.json or re-train it with `harness train-wm --wm {name}`")
    return folder, config


def addon_folder(name: str, checkpoint: str | os.PathLike | None, out: str | os.PathLike | None, sub: str,
                 fmt: str) -> Path:
    """Where an add-on of a world model (``sub``: its distilled decoder, proprioception readout;
    ``fmt``: its checkpoint format) is to be written: ``out``, else inside the model's checkpoint.
    Refused in one line, before any work, when saving there would replace something else
    (``check_replaceable``), or would write into the checkpoint shipped in the repository without
    it being named with ``checkpoint`` (on purpose, as scripts/build_embedded.sh does)."""
    from .checkpoint import check_replaceable

    if out is not None:
        target = Path(out)
    else:
        folder = find_checkpoint(name, checkpoint)
        if checkpoint is None and folder.resolve().is_relative_to(SHIPPED_DIR.resolve()):
            raise HarnessError(f"world model {name!r} is the one shipped in the repository ({folder}); writing "
                               f"{sub}/ there would replace the shipped one: copy the folder to "
                               f"{default_checkpoint(name)} (found first), pass --out DIR, or --wm-checkpoint "
                               f"{folder} to replace it on purpose")
        target = folder / sub
    check_replaceable(target, fmt)
    return target


def load_world_model(name: str, checkpoint: str | os.PathLike | None = None):
    """The named world model, ready to ``encode``/``predict``/``decode``."""
    from .world_model import WorldModel

    read_config(name)  # unknown names fail here with the list of known ones
    folder = find_checkpoint(name, checkpoint)
    hint = (f"Train it with `harness train-wm --wm {name} --data DATASET` (writes {default_checkpoint(name)}) "
            f"or pass --wm-checkpoint DIR.")
    return WorldModel.load(folder, hint=hint)


def register_all(registry) -> None:
    for name, path in config_files().items():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            data = {}
        meta = {k: data.get(k) for k in ("encoder", "size") if k in data}
        registry.register(name, "world_models.named:load_world_model", kwargs={"name": name},
                          description=data.get("description", ""), meta={**meta, "config": str(path)})
