"""A name -> class registry: every extension point (low-rank methods, workloads, cost models, sources,
baselines, backends) is filled through it."""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes derived from ``base`` by their ``name`` attribute; ``option`` names the env option."""

    def __init__(self, base: type, option: str, how_to_add: str) -> None:
        self.base, self.option, self.how_to_add = base, option, how_to_add
        self._classes: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> module whose import registers it
        self._order: dict[str, None] = {}  # every name, lazy ones included, in registration order

    def register_lazy(self, name: str, module: str) -> None:
        """Makes ``name`` known before its class is imported: :meth:`get` imports ``module``, which must
        register ``name`` (so that an optional, heavy dependency is imported only when it is used)."""
        self._lazy[name] = module
        self._order[name] = None

    def register(self, cls: T) -> T:
        """Class decorator: makes ``cls`` available as ``<option>=cls.name``."""
        named = isinstance(getattr(cls, "name", None), str)
        if not (isinstance(cls, type) and issubclass(cls, self.base)) or not named:
            raise TypeError(f"{cls!r} must be a {self.base.__name__} subclass with a string `name`")
        if self._classes.get(cls.name, cls) is not cls:
            raise ValueError(
                f"{self.option} name {cls.name!r} is already registered by {self._classes[cls.name].__qualname__}"
            )
        self._classes[cls.name] = cls
        self._order[cls.name] = None
        return cls

    def unregister(self, name: str) -> None:
        """Removes ``name`` (a test's toy extension, so that it does not outlive the test)."""
        self.get(name)
        del self._classes[name], self._order[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._order)

    def get(self, name: str) -> T:
        if name not in self._classes and name in self._lazy:
            module = self._lazy.pop(name)
            importlib.import_module(module)
            if name not in self._classes:
                raise RuntimeError(f"importing {module} did not register {self.option}={name!r}")
        if name not in self._classes:
            raise ValueError(
                f"{self.option}={name!r} is not allowed; choose one of {list(self.names())} ({self.how_to_add})"
            )
        return self._classes[name]
