"""The precisions a world model's networks can run in at inference (no torch import here, so
configs can validate a name cheaply).

``float32`` is the trained precision. ``bfloat16`` runs the transition network (``predict``) and
the pixel decoder (``decode``) in bf16 copies made on first use; latents, noise and the flow
integration stay float32. It pays only on CPUs with native bf16 dot products (AVX512-BF16,
AMX); on AVX2-only CPUs bf16 matmuls are several times slower than float32's. Pixels stay within
a few intensity levels of float32.
"""

from __future__ import annotations

PRECISIONS = ("float32", "bfloat16")


def check_precision(name: object, where: str) -> str:
    from harness.errors import HarnessError

    if name not in PRECISIONS:
        raise HarnessError(f"{where} {name!r} is not a precision: use {' or '.join(PRECISIONS)}")
    return name  # type: ignore[return-value]


def torch_dtype(name: str):
    """None for float32 (the model as trained), else the torch dtype."""
    import torch

    return None if check_precision(name, "precision") == "float32" else getattr(torch, name)
