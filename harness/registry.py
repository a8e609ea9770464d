"""One generic registry for envs, policies, world models and judges.

Entries are either objects registered with the decorator or lazy ``"module:attr"``
strings, imported only when the entry is used, so listing names never imports a
simulator or a model library.
"""

from __future__ import annotations

import difflib
import importlib
import re
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


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""


def parse_spec(text: str, registry: Registry, *, example: str, skip: tuple[str, ...] = (),
               tail: str | None = None) -> tuple[str, dict[str, Any]]:
    """``name:key=value,...`` -> (name, params) for a registry whose entries are factories.

    Values are read as YAML scalars (``0.5`` a float, ``true`` a bool, else the text). The name
    and every key are checked against the registry and the factory's signature (``skip``: the
    parameters the harness passes itself, e.g. ``env_info``). ``tail``: a parameter that takes the
    rest of the spec, commas and colons included (a list of nested specs)."""
    import inspect

    import yaml

    what = registry.kind
    text = text.strip()
    name, sep, rest = text.partition(":")
    if not name:
        raise HarnessError(f"empty {what} name in {text!r}: write e.g. {example!r}")
    if name not in registry:
        raise HarnessError(registry.unknown_message(name))
    params: dict[str, Any] = {}
    if sep and tail:  # the first `tail=` takes the rest of the spec
        marker = f"{tail}="
        if rest.startswith(marker):
            rest, params[tail] = "", rest[len(marker):]
        elif "," + marker in rest:
            rest, _, params[tail] = rest.partition("," + marker)
    if sep:
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise HarnessError(f"{what} parameter {item!r} in {text!r} is not key=value: write e.g. {example!r}")
            if key.strip() in params:
                raise HarnessError(f"{what} parameter {key.strip()!r} is given twice in {text!r}: keep one")
            try:
                params[key.strip()] = yaml.safe_load(value.strip())
            except yaml.YAMLError:
                params[key.strip()] = value.strip()
            if isinstance(params[key.strip()], str) and _NUMBER.fullmatch(value.strip()):
                params[key.strip()] = float(value.strip())  # YAML 1.1 reads 1e-3 as text
    signature = inspect.signature(registry.get(name)).parameters
    allowed = [p for p in signature if p not in skip]
    for key in params:
        if key not in allowed:
            raise HarnessError(f"{what} {name!r} has no parameter {key!r}; its parameters: {', '.join(allowed) or '(none)'}")
    bound = registry.entry(name).kwargs
    missing = [p for p in allowed if p not in params and p not in bound and signature[p].default is inspect.Parameter.empty
               and signature[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if missing:
        needed = ",".join(f"{p}=..." for p in missing)
        raise HarnessError(f"{what} {name!r} needs {', '.join(missing)}: write e.g. {name}:{needed}")
    return name, params
