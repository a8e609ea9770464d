"""harness.run.allocator: glibc keeps freed blocks for reuse once the harness starts."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


CHILD = r"""
import ctypes, sys, torch
from harness.run.allocator import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory() is True and keep_freed_memory() is True  # applied once, then remembered
before = libc.mallinfo2().hblks
x = torch.empty(8 * 1024 * 1024 // 4)  # the process's first 8 MB block
x.fill_(1.0)
print(libc.mallinfo2().hblks - before)  # how many blocks glibc mmap'd for it
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere keep_freed_memory does nothing")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    # a fresh process per setting: mallopt is process-wide, and glibc raises its own threshold
    # once a mapped block has been freed, so only a process's first large block tells
    mapped = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        mapped[mode] = int(out.stdout.split()[-1])
    assert mapped == {"default": 1, "keep": 0}


def test_harness_cli_applies_it(monkeypatch):
    import harness.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["list", "policies"]) == 0
    assert calls == [1]
