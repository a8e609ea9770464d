"""The `harness` command line. Expected errors are one line on stderr and exit code 2.

One module per command group registers its commands on the shared app (``app.py``).
"""

from __future__ import annotations

import logging
import sys

import typer

from harness.errors import HarnessError
from harness.run.allocator import keep_freed_memory

# each module registers its commands; `harness --help` lists them in this order
# isort: off
from . import run, train, analyses, data  # noqa: F401
# isort: on
from .app import app


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2 for bad input, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # batched world-model calls reuse freed blocks (harness/run/allocator.py)
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="harness", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except HarnessError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # one line, even if a value had newlines
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Typer ships its own copy of click: recognise its exceptions by their interface.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage / bad parameter
            msg = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `harness {ctx.info_name} --help`)" if ctx is not None and ctx.info_name != "harness" else ""
            print(f"error: {msg}{hint}", file=sys.stderr)
            return 2
        if type(exc).__name__ == "Exit":
            return int(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
