"""Admission: who is dispatched now, who waits at the router, who is refused. Pure: values
and the clock come in, decisions go out; the asyncio side is ``router/dispatch/gate.py``.

- ``settings``: priority tiers and their reserves, per-class waiting limits;
- ``queue``: one pool's bounded wait queue (``WaitQueue``) of ``Waiter``s;
- ``codel``: the standing-queue detector of one class;
- ``drain``: how fast a queue drains, and the Retry-After that follows;
- ``verdict``: whether a planned request may go now, and if not why it waits;
- ``overload``: the router's own health, as the tiers it sheds.

A request that cannot start now waits in its preferred pool's bounded queue, ordered by
priority tier (0 is the highest) then arrival (short ones newest first once a queue of
them forms: see ``WaitQueue.service_order``). It leaves the queue in exactly one way:

* dispatched, when a candidate backend has room (``verdict`` says ADMIT);
* refused 429 ``queue_full`` when the queue is full and no lower tier waits to make room
  for it, or when a higher tier arrives and it is the lowest, newest waiter (evicted);
* refused 429 ``deadline`` when its deadline passed, it waited longer than its class
  allows, or on arrival the queue ahead of it cannot drain before its deadline;
* gone, when its client left (the gate removes it).

Long requests (``LongWork.is_long``) are also *held*: they wait, within their deadline,
while the best backend for them already has a long prefill pending (it would queue inside
the engine, committed to it, instead of here, free to take the first backend that
clears), while dispatching one would leave fewer than ``keep_clean`` backends of the model
free of a long pending prefill (a short request behind a long prefill waits for all of
it), while it would put the chosen backend's KV budget in flight past its KV capacity (the
engine would preempt), or while the only backend free for it is one kept light for short
requests (the planner's ``reserved_for_short``) and a busy one with KV room will soon be
free (a long document decodes for seconds after its prefill, slowing every step of its
engine: long work stays on the others while they can carry it). A long prefill in flight
always ends, so a held request never waits on nothing: with no long prefill pending
anywhere, it is admitted. A long request also yields, for a bounded time, to a short
prefill pending on its best backend (the engine would run the short prompt in the same
step as the long one's first chunk).

The allowed wait shrinks when a standing queue forms (CoDel): once, for ``interval``,
every request dispatched had waited more than ``target`` or the head of the queue has,
waiters of that class and of the lowest tier waiting may wait only ``target``, until the
cut has refused nobody for an interval. So a queue that absorbs a burst is fine, and a
queue that only adds delay is cut back.
"""

from ctxroute.router.core.admission.codel import Codel
from ctxroute.router.core.admission.drain import DrainMeter, retry_after
from ctxroute.router.core.admission.overload import OverloadGuard
from ctxroute.router.core.admission.queue import Waiter, WaitQueue
from ctxroute.router.core.admission.settings import AdmissionSettings, ClassLimits, Tier
from ctxroute.router.core.admission.verdict import HOLDS, YIELD_TO_SHORT_MS, Verdict, verdict

__all__ = [
    "HOLDS",
    "YIELD_TO_SHORT_MS",
    "AdmissionSettings",
    "ClassLimits",
    "Codel",
    "DrainMeter",
    "OverloadGuard",
    "Tier",
    "Verdict",
    "WaitQueue",
    "Waiter",
    "retry_after",
    "verdict",
]
