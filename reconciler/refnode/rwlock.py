"""A readers-writer lock shaped like the node's `parking_lot::RwLock`.

snarkOS keeps the plugin manager behind an `RwLock`: the list route takes a read lock,
load and unload take the write lock for the whole load (open, parse, dlopen, `on_load`).
So a slow `on_load` makes a concurrent list wait. parking_lot is fair to writers (a
waiting writer blocks new readers), which this lock reproduces, so that a test of a slow
load sees the stall a real node shows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RwLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
