"""harness.allocator: glibc keeps freed blocks for reuse once the harness starts."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere keep_freed_memory does nothing")
def test_keep_freed_memory_applies_once_and_large_blocks_stop_being_mapped():
    # in a fresh process: mallopt is process-wide, and the count of mmap'd blocks is glibc's own
    code = r"""
import ctypes, torch
from harness.allocator import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2

def mapped_blocks_while_holding(mb):
    x = torch.empty(mb * 1024 * 1024 // 4)
    x.fill_(1.0)
    n = libc.mallinfo2().hblks
    del x
    return n

before = mapped_blocks_while_holding(4) - libc.mallinfo2().hblks  # glibc default: a 4 MB block is mmap'd
assert keep_freed_memory() is True and keep_freed_memory() is True
after = mapped_blocks_while_holding(4) - libc.mallinfo2().hblks  # now it comes from the heap
print(before, after)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert before >= 1 and after == 0


def test_harness_cli_applies_it(monkeypatch):
    import harness.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["list", "policies"]) == 0
    assert calls == [1]
