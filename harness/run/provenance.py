"""Which weights a run used: a content fingerprint of every checkpoint it names.

A run folder holds the episodes of one experiment. Its identity (``EvalConfig.identity``) names
the world model, the judge and the policies, but a name is not the weights: re-training
``minivae_dit_tiny`` (``harness train-wm`` writes ``~/.cache/wm-harness/checkpoints/<name>``,
which then shadows the shipped one), re-fitting a judge or overwriting a BC checkpoint keeps
every name and changes every outcome. The run records a fingerprint of each checkpoint it loads
(``run.json`` and ``results.json``, key ``checkpoints``) and a resumed run refuses to add episodes
made with other weights.

What is fingerprinted:

- ``--wm NAME``: the world model's own files (``config.json``, ``model.safetensors``; not the
  add-on folders beside them), plus ``distilled_decoder/`` when ``--wm-decoder distilled``;
- the judge: every ``path=`` in its spec (the world model's own ``judge/`` by default);
- the policies: every ``path=`` (BC checkpoints, OpenVLA folders, replayed datasets), every
  ``goal_data=`` (CEM's goal episodes) and every ``wm=`` (CEM's world model, at the spec's
  ``checkpoint=`` when given: its own files as above, and its ``proprio/`` readout when the spec
  weighs the proprio term) in their specs, nested specs included.

A fingerprint is sha256 over the files' relative names, sizes and contents; a file over
``WHOLE_FILE`` bytes (multi-GB pretrained weights) is hashed by its size and its first and last
``EDGE`` bytes, so a 15 GB OpenVLA folder costs milliseconds, not a minute. Weights named by a
Hugging Face repo id rather than a path are not fingerprinted (their revision is the user's).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

WHOLE_FILE = 64 * 1024 * 1024
EDGE = 4 * 1024 * 1024
WORLD_MODEL_FILES = ("config.json", "model.safetensors")  # a world model's own files (add-ons live in subfolders)
# ``key=value`` references in a (possibly nested) spec: ``bc:path=D``, ``noisy:base=bc:path=D``,
# ``consensus:judges=vlm:path=A+latent_classifier:path=B``, ``cem:wm=NAME,checkpoint=DIR,goal_data=D.h5``
SPEC_REFS = re.compile(r"(?:^|[:,+])(path|wm|checkpoint|goal_data)=([^,+]+)")
PROPRIO_WEIGHT = re.compile(r"(?:^|[:,+])proprio=([^,+]+)")  # CEM's proprio term reads <wm>/proprio
PRESET = re.compile(r"(?:^|[:,+])preset=([^,+]+)")


def reads_proprio(spec: str) -> bool:
    """Whether a spec's CEM weighs the proprio term (it then loads the world model's readout): a
    positive ``proprio=W``, or, without one, its preset's weight (``dino_wm`` weighs it 1)."""
    weights = PROPRIO_WEIGHT.findall(spec)
    if weights:
        return any(_positive(w) for w in weights)
    if not spec.strip().startswith("cem:"):
        return False
    from policies.cem import CEM_PRESETS

    preset = next(iter(PRESET.findall(spec)), "cpu").strip()
    return preset in CEM_PRESETS and CEM_PRESETS[preset].proprio > 0


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= WHOLE_FILE:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()


def fingerprint(path: str | os.PathLike, names: tuple[str, ...] | None = None) -> str | None:
    """16 hex digits of sha256 over the files at ``path``: a file, or a folder's files (all of
    them, recursively, or only the top-level ones called ``names``); None when nothing is there."""
    root = Path(path)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        found = (root / n for n in names) if names is not None else root.rglob("*")
        files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    else:
        return None
    if not files:
        return None
    h = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        name = file.name if file == root else file.relative_to(root).as_posix()
        h.update(f"{name}\0{size}\0{_file_digest(file, size)}\n".encode())
    return h.hexdigest()[:16]


def world_model_fingerprints(name: str, checkpoint: str | os.PathLike | None = None, label: str = "",
                             addons: dict[str, str] | None = None) -> dict[str, str]:
    """``{"<label>wm=NAME": fp}`` of the named world model's own files (``WORLD_MODEL_FILES``, not
    its add-on folders), at ``checkpoint`` when given, else where ``harness`` finds it; plus
    ``{key: fp}`` of each add-on subfolder it will load (``addons``: key -> subfolder)."""
    from world_models.named import find_checkpoint

    folder = find_checkpoint(name, checkpoint)
    found = {f"{label}wm={name}": fingerprint(folder, WORLD_MODEL_FILES)}
    found.update({key: fingerprint(folder / sub) for key, sub in (addons or {}).items()})
    return {key: fp for key, fp in found.items() if fp is not None}


def spec_fingerprints(spec: str, label: str = "") -> dict[str, str]:
    """``{"<label>path=V": fp, "<label>wm=NAME": fp, ...}`` for the references in one spec. A
    ``wm=NAME`` is fingerprinted at the spec's ``checkpoint=DIR`` when it has one (CEM's)."""
    refs = [(key, value.strip()) for key, value in SPEC_REFS.findall(spec)]
    checkpoint = next((value for key, value in refs if key == "checkpoint"), None)
    out = {}
    for key, value in refs:
        if key == "wm":
            from world_models.proprio import PROPRIO_DIR

            proprio = reads_proprio(spec)
            out.update(world_model_fingerprints(value, checkpoint, label,
                                                {f"{label}wm={value} {PROPRIO_DIR}": PROPRIO_DIR} if proprio else {}))
        elif key != "checkpoint":  # a checkpoint= belongs to the wm= beside it
            fp = fingerprint(value)
            if fp is not None:
                out[f"{label}{key}={value}"] = fp
    if checkpoint is not None and not any(key == "wm" for key, _ in refs):
        fp = fingerprint(checkpoint)
        if fp is not None:
            out[f"{label}checkpoint={checkpoint}"] = fp
    return out


def _positive(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def run_checkpoints(config: Any, judge: str | None) -> dict[str, str]:
    """The fingerprints of everything an eval with ``config`` (an ``EvalConfig``) and the resolved
    ``judge`` spec loads, keyed by what names it."""
    out: dict[str, str] = {}
    if config.wm:
        from world_models.distill import DISTILLED_DIR

        distilled = {"wm_decoder=distilled": DISTILLED_DIR} if config.wm_decoder == "distilled" else {}
        out.update(world_model_fingerprints(config.wm, config.wm_checkpoint, addons=distilled))
    if judge:
        if config.judge:  # as the user wrote it
            out.update(spec_fingerprints(judge, "judge "))
        else:  # the world model's own: its folder may move with the repository
            fps = list(spec_fingerprints(judge).values())  # one: latent_classifier:path=<checkpoint>/judge
            if fps:
                out["judge (the world model's own)"] = "+".join(fps)
    for policy in config.policies:
        out.update(spec_fingerprints(policy))
    return out
