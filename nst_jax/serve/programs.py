"""A bounded cache of compiled model programs, shared by every model the server runs.

Every XLA CPU program keeps its own memory mappings, and jit's own cache never lets one go: a process that
compiles one program per (model, frame size, batch) for a day of size and model switches would reach the
kernel's `vm.max_map_count` and crash inside LLVM. The server compiles its programs ahead of time
(`Stylizer.compile_conditions`) and keeps the most recently used `size` of them here; an evicted program is
freed (its mappings are reused by the next one) and compiled again if it is needed again.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any


class ProgramCache:
    """Least recently used compiled programs by key, e.g. (model, height, width, batch).

    Args:
      size: programs kept at once (at least 1).
    """

    def __init__(self, size: int = 32):
        if size < 1:
            raise ValueError("a program cache holds at least one program")
        self.size = int(size)
        self.compiles = 0
        self.evictions = 0
        self._programs: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self._lock = threading.Lock()  # each model compiles and runs on its own thread

    def __len__(self) -> int:
        return len(self._programs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._programs

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The program for `key`, built with `build()` (a compilation) if it is not kept."""
        with self._lock:
            program = self._programs.get(key)
            if program is not None:
                self._programs.move_to_end(key)
                return program
        program = build()  # outside the lock: another model's thread may compile meanwhile
        with self._lock:
            self.compiles += 1
            self._programs[key] = program
            self._programs.move_to_end(key)
            while len(self._programs) > self.size:
                self._programs.popitem(last=False)
                self.evictions += 1
        return program

    def drop(self, match: Callable[[Hashable], bool]) -> None:
        """Forget every program whose key `match`es (e.g. a model that is unloaded)."""
        with self._lock:
            for key in [k for k in self._programs if match(k)]:
                del self._programs[key]
