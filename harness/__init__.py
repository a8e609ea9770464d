"""Closed-loop evaluation harness for robot world models."""

from __future__ import annotations

import os

__version__ = "0.1.0"

# MuJoCo picks its GL backend at first import, and simulators or scripted experts may import
# it from anywhere: headless EGL unless the user chose otherwise (osmesa, glfw).
os.environ.setdefault("MUJOCO_GL", "egl")
