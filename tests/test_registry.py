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


def _spec_registry():
    from harness.registry import parse_spec

    reg = Registry("policy")

    @reg.register("cem")
    def cem(env_info, wm, temperature=1.0, samples=300):
        return wm, temperature, samples

    reg.register("bound", cem, kwargs={"wm": "tiny"})
    return reg, parse_spec


def test_spec_without_a_required_parameter_is_one_clear_line():
    reg, parse_spec = _spec_registry()
    with pytest.raises(HarnessError) as err:
        parse_spec("cem:samples=10", reg, example="cem:wm=NAME", skip=("env_info",))
    assert str(err.value) == "policy 'cem' needs wm: write e.g. cem:wm=..."
    assert parse_spec("cem:wm=tiny", reg, example="x", skip=("env_info",)) == ("cem", {"wm": "tiny"})
    assert parse_spec("bound", reg, example="x", skip=("env_info",)) == ("bound", {})  # bound by the registry


def test_spec_reads_exponent_numbers_as_numbers():
    reg, parse_spec = _spec_registry()
    _, params = parse_spec("cem:wm=tiny,temperature=1e-1,samples=3", reg, example="x", skip=("env_info",))
    assert params == {"wm": "tiny", "temperature": 0.1, "samples": 3}
    _, params = parse_spec("cem:wm=1e3x", reg, example="x", skip=("env_info",))
    assert params == {"wm": "1e3x"}
