"""The load view of a replica: its own rows plus what the other processes published
through Redis (router/store/redis.py carries them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ctxroute.router.model import Load
from ctxroute.router.store.loadboard import LoadView


class SharedLoad:
    """The load view with other processes' published load added (``LoadView``).

    ``notify`` is called when a long prefill starts or ends here: the change that matters
    most to the other replicas' next decisions (a short request must not land behind it),
    so it is announced at once rather than at the next periodic publication."""

    def __init__(self, board: LoadView, urls: Sequence[str],
                 notify: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.board = board
        self.notify = notify
        self.urls = list(urls)
        self.index = {url: i for i, url in enumerate(self.urls)}
        self.remote: list[Load] = [Load()] * len(self.urls)
        self.others: dict[str, str] = {}  # process id -> its packed rows

    def add(self, backend: int, in_flight: int, pending: int, long: int, budget: int,
            long_flight: int = 0) -> None:  # fmt: skip
        self.board.add(backend, in_flight, pending, long, budget, long_flight)
        if (long or long_flight) and self.notify is not None:
            self.notify()

    def local(self, backend: int) -> Load:
        return self.board.local(backend)

    def fleet(self, backend: int) -> Load:
        mine = self.board.local(backend)
        other = self.remote[backend]
        if other.in_flight == 0 and other.budget_in_flight == 0 and other.pending_prefill == 0:
            return mine
        return Load(
            mine.in_flight + other.in_flight,
            mine.pending_prefill + other.pending_prefill,
            mine.long_pending + other.long_pending,
            mine.budget_in_flight + other.budget_in_flight,
            mine.long_in_flight + other.long_in_flight,
        )

    def packed(self) -> str:
        """This process's rows, each named by its backend's URL: replicas whose backend
        lists differ (a rolling config change) still add load to the right backend."""
        local = self.board.local
        return ";".join(
            f"{url}|{r.in_flight},{r.pending_prefill},{r.long_pending},{r.budget_in_flight},"
            f"{r.long_in_flight}"
            for url, r in zip(self.urls, (local(i) for i in range(len(self.urls))), strict=True)
        )

    def merge(self, reply: Sequence[str]) -> None:
        """Every live process's rows, as Redis has them (``id, rows, id, rows, ...``)."""
        self.others = dict(zip(reply[0::2], reply[1::2], strict=True))
        self._sum()

    def update(self, process: str, packed: str) -> None:
        """One process announced its rows (pub/sub): until the next full read."""
        self.others[process] = packed
        self._sum()

    def _sum(self) -> None:
        total = [[0, 0, 0, 0, 0] for _ in self.remote]
        index = self.index
        for packed in self.others.values():
            for position, row in enumerate(packed.split(";")):
                url, _, fields = row.rpartition("|")
                # a row without its URL comes from an older release: by position, as then
                i = index.get(url) if url else (position if position < len(total) else None)
                if i is None:
                    continue  # a backend this replica does not have
                cells = total[i]
                # a replica of the release before long_in_flight publishes four fields
                for j, value in enumerate(fields.split(",")[:5]):
                    cells[j] += int(value)
        self.remote = [Load(*cells) for cells in total]

    def forget_others(self) -> None:
        self.others.clear()
        self.remote = [Load()] * len(self.remote)
