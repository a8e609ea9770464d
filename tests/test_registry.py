from __future__ import annotations

import sys
import types

import pytest

from harness.errors import HarnessError
from harness.registry import Registry


def test_decorator_and_lazy_entries():
    reg = Registry("widget")

    @reg.register("square")
    def square(x=2):
        """Squares a number."""
        return x * x

    mod = types.ModuleType("fake_widgets_mod")
    mod.cube = lambda x=2: x**3
    sys.modules["fake_widgets_mod"] = mod
    try:
        reg.register("cube", "fake_widgets_mod:cube", kwargs={"x": 3})
        assert reg.names() == ["square", "cube"]
        assert reg.entry("square").description == "Squares a number."
        assert isinstance(reg.entry("cube").target, str)  # not imported until used
        assert reg.build("cube") == 27
        assert reg.build("cube", x=2) == 8
        assert reg.build("square", x=5) == 25
    finally:
        del sys.modules["fake_widgets_mod"]


def test_unknown_name_suggests_close_matches():
    reg = Registry("policy")
    for name in ("scripted", "random", "replay"):
        reg.register(name, object)
    with pytest.raises(HarnessError) as err:
        reg.get("scriptd")
    msg = str(err.value)
    assert "unknown policy 'scriptd'" in msg
    assert "Did you mean 'scripted'?" in msg
    assert "Available: scripted, random, replay" in msg
    assert "\n" not in msg


def test_duplicate_registration_is_refused():
    reg = Registry("env")
    reg.register("a", object)
    with pytest.raises(ValueError):
        reg.register("a", object)


def test_lazy_entries_do_not_import_simulators():
    import subprocess

    code = ("import sys, envs, policies, world_models, harness.cli; "
            "bad = [m for m in ('metaworld', 'mujoco', 'torch', 'libero', 'ray') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
