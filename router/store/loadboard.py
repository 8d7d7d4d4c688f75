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

from ctxroute.router.model import Load

FIELDS: Final = 5  # in_flight, pending_prefill, long_pending, budget_in_flight, long_in_flight
_CELL: Final = 8
# a Load without the NamedTuple's Python-level __new__ (why: docs/architecture.md,
# "Performance budget")
_new_tuple = tuple.__new__


class LoadView(Protocol):
    def add(self, backend: int, in_flight: int, pending: int, long: int, budget: int,
            long_flight: int = 0) -> None: ...  # fmt: skip
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
        # one FIELDS-long view per (row, backend), made once: the request path indexes a
        # backend's four counters directly, without offset arithmetic per call
        self._cells: list[list[list[int]]] | list[list[memoryview]]
        if shared is None:
            # one process: lists read and write fastest
            self._cells = [[[0] * FIELDS for _ in range(backends)] for _ in range(rows)]
        else:
            size = rows * backends * FIELDS + backends
            if len(shared) < size * _CELL:
                raise ValueError("the shared mapping is smaller than the board")
            cells = memoryview(shared).cast("q")
            self._cells = [
                [cells[(r * backends + b) * FIELDS : (r * backends + b + 1) * FIELDS]
                 for b in range(backends)]
                for r in range(rows)
            ]  # fmt: skip
        # operator drains, one cell per backend after the rows: with workers, a drain made
        # through one of them is seen by all (MemoryStore follows these)
        self.drains: list[int] | memoryview = [0] * backends
        if shared is not None:
            start = rows * backends * FIELDS
            self.drains = memoryview(shared).cast("q")[start : start + backends]
        self._mine = self._cells[row]
        # each backend's rows, for the fleet-wide sum
        self._columns = [[self._cells[r][b] for r in range(rows)] for b in range(backends)]
        if rows == 1:
            self.fleet = self.local  # type: ignore[method-assign]  # one process: its own row

    @staticmethod
    def shared_memory(backends: int, rows: int) -> mmap.mmap:
        """An anonymous MAP_SHARED mapping for ``rows`` processes: make it before forking."""
        return mmap.mmap(-1, max(1, (rows * backends * FIELDS + backends) * _CELL))

    def add(self, backend: int, in_flight: int, pending: int, long: int, budget: int,
            long_flight: int = 0) -> None:  # fmt: skip
        cells = self._mine[backend]
        cells[0] += in_flight
        cells[1] += pending
        cells[2] += long
        cells[3] += budget
        if long_flight:
            cells[4] += long_flight

    def local(self, backend: int) -> Load:
        cells = self._mine[backend]
        return _new_tuple(Load, (cells[0], cells[1], cells[2], cells[3], cells[4]))

    def fleet(self, backend: int) -> Load:
        f = p = lg = b = lf = 0
        for cells in self._columns[backend]:
            f += cells[0]
            p += cells[1]
            lg += cells[2]
            b += cells[3]
            lf += cells[4]
        return _new_tuple(Load, (f, p, lg, b, lf))

    def clear_row(self, row: int) -> None:
        """Forget a dead process's load (its requests died with it)."""
        for cells in self._cells[row]:
            for i in range(FIELDS):
                cells[i] = 0
