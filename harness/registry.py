"""One generic registry for envs, policies, world models and judges.

Entries are either objects registered with the decorator or lazy ``"module:attr"``
strings, imported only when the entry is used, so listing names never imports a
simulator or a model library.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from harness.errors import HarnessError

T = TypeVar("T")


@dataclass
class Entry:
    name: str
    target: Any  # the object, or a "module:attr" string until first use
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)  # bound arguments for the factory
    meta: dict[str, Any] = field(default_factory=dict)  # free-form facts shown by `harness list`

    def load(self) -> Any:
        if isinstance(self.target, str):
            module_name, _, attr = self.target.partition(":")
            if not attr:
                raise ValueError(f"lazy entry {self.name!r} must be 'module:attr', got {self.target!r}")
            module = importlib.import_module(module_name)
            self.target = getattr(module, attr)
        return self.target


class Registry(Generic[T]):
    """Name -> factory. ``kind`` names what is registered, for error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    # registration -----------------------------------------------------------------
    def register(
        self,
        name: str,
        target: Any = None,
        *,
        description: str = "",
        kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Any:
        """``registry.register("x", "pkg.mod:Cls")`` registers lazily;
        ``@registry.register("x")`` registers the decorated object."""
        if target is None:

            def decorator(obj: Callable[..., T]) -> Callable[..., T]:
                self._add(Entry(name, obj, description or _first_line(obj.__doc__), kwargs or {}, meta or {}))
                return obj

            return decorator
        self._add(Entry(name, target, description, kwargs or {}, meta or {}))
        return target

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    # lookup -------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise HarnessError(self.unknown_message(name)) from None

    def get(self, name: str) -> Any:
        """The registered object (importing it if lazy)."""
        return self.entry(name).load()

    def build(self, name: str, **kwargs: Any) -> T:
        entry = self.entry(name)
        return entry.load()(**{**entry.kwargs, **kwargs})

    def unknown_message(self, name: str, extra_names: list[str] | None = None) -> str:
        names = self.names() + (extra_names or [])
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(names[:25]) + (f", ... ({len(names)} in all; see `harness list`)" if len(names) > 25 else "")
        return f"unknown {self.kind} {name!r}.{hint} Available: {shown or '(none)'}"


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
