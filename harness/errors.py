"""User-facing errors: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class HarnessError(Exception):
    """Bad input or a missing requirement. The message is one line: what arrived,
    what is allowed, how to fix it."""

    exit_code = 2


class MissingExtraError(HarnessError):
    """An optional dependency (simulator, model family) is not installed."""

    def __init__(self, what: str, extra: str, module: str | None = None):
        hint = f'pip install -e ".[{extra}]"'
        super().__init__(f"{what} is not installed{f' (no module {module!r})' if module else ''}: {hint}")


def require_module(module: str, what: str, extra: str) -> None:
    """Raise MissingExtraError unless `module` can be imported (without importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtraError(what, extra, module)
