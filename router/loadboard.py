"""Per-backend load counters, one row per process: each process writes its own row, every
process reads the sum (ARCHITECTURE: "One view of load across processes").

With one process the board is a plain array. With ``serve --workers N`` it lives in an
anonymous shared mapping made by the parent before it forks, so every worker sees every
other worker's load at once, with no lock: a row has one writer, a cell is one aligned
8-byte integer, and readers only add. A worker that dies leaves its row behind; the parent
clears it (``clear_row``) before anything else happens.

``LoadView`` is the interface the planner's edge reads through; the Redis store of the
replicas on many hosts implements it too (local row + what the others published).
"""

from __future__ import annotations

import mmap
from typing import Final, Protocol

from router.model import Load

FIELDS: Final = 4  # in_flight, pending_prefill, long_pending, budget_in_flight
_CELL: Final = 8


class LoadView(Protocol):
    def add(self, backend: int, in_flight: int, pending: int, long: int, budget: int) -> None: ...
    def local(self, backend: int) -> Load: ...
    def fleet(self, backend: int) -> Load: ...


class LoadBoard:
    """``rows`` x ``backends`` x FIELDS signed 64-bit counters; this process owns ``row``."""

    def __init__(self, backends: int, rows: int = 1, row: int = 0,
                 shared: mmap.mmap | None = None) -> None:  # fmt: skip
        if not 0 <= row < rows:
            raise ValueError(f"row {row} is not one of {rows}")
        self.backends = backends
        self.rows = rows
        self.row = row
        size = rows * backends * FIELDS
        self._cells: memoryview | list[int]
        if shared is None:
            self._cells = [0] * size  # one process: a list reads and writes fastest
        else:
            if len(shared) < size * _CELL:
                raise ValueError("the shared mapping is smaller than the board")
            self._cells = memoryview(shared).cast("q")
        self._stride = backends * FIELDS
        self._base = row * self._stride
        if rows == 1:
            self.fleet = self.local  # type: ignore[method-assign]  # one process: its own row

    @staticmethod
    def shared_memory(backends: int, rows: int) -> mmap.mmap:
        """An anonymous MAP_SHARED mapping for ``rows`` processes: make it before forking."""
        return mmap.mmap(-1, max(1, rows * backends * FIELDS * _CELL))

    def add(self, backend: int, in_flight: int, pending: int, long: int, budget: int) -> None:
        cells = self._cells
        at = self._base + backend * FIELDS
        cells[at] += in_flight
        cells[at + 1] += pending
        cells[at + 2] += long
        cells[at + 3] += budget

    def local(self, backend: int) -> Load:
        cells = self._cells
        at = self._base + backend * FIELDS
        return Load(cells[at], cells[at + 1], cells[at + 2], cells[at + 3])

    def fleet(self, backend: int) -> Load:
        cells = self._cells
        f = p = lg = b = 0
        at = backend * FIELDS
        for _ in range(self.rows):
            f += cells[at]
            p += cells[at + 1]
            lg += cells[at + 2]
            b += cells[at + 3]
            at += self._stride
        return Load(f, p, lg, b)

    def clear_row(self, row: int) -> None:
        """Forget a dead process's load (its requests died with it)."""
        start = row * self._stride
        for i in range(start, start + self._stride):
            self._cells[i] = 0
