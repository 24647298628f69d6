"""The buffer's flow control on its own: the in-memory bound, shedding, congestion and relief."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.buffer.flow import Flow
from gateway.model import Batch, PointSet, StoredBatch

POINTS = PointSet(("a", "b", "c", "d", "e"), (None,) * 5)


def batch(base: int) -> Batch:
    return Batch("dev1", base, POINTS, [base] * 5)


def stored(row: int) -> StoredBatch:
    return StoredBatch(row, "dev1", row * 5, row, POINTS.names, POINTS.units, [row] * 5, None, None)


def state(flow: Flow) -> dict[str, Any]:
    return {k: v for k, v in vars(flow).items() if k != "batches"} | {"batches": list(flow.batches)}


async def test_congested_is_a_query_that_changes_nothing() -> None:
    flow = Flow(40, 3600.0, lambda: True)
    flow.committed(0, [stored(row) for row in range(1, 6)])  # 25 committed, not yet fetched
    flow.busy = 1.0
    before = state(flow)
    assert flow.congested(publishing=True) and flow.congested(publishing=True)
    assert state(flow) == before
    relieved = asyncio.ensure_future(flow.relief(publishing=False))  # not waiting for the lag
    await asyncio.sleep(0)
    flow.handed([stored(row) for row in range(1, 3)])  # 15 left: under the half
    await asyncio.sleep(0)
    assert not relieved.done()  # nothing asked to be woken by the lag: the commit (or the interval) will
    flow.relieve()
    await asyncio.wait_for(relieved, 5)


async def test_relief_for_the_lag_ends_once_a_fetch_eased_it() -> None:
    flow = Flow(40, 3600.0, lambda: True)
    flow.committed(0, [stored(row) for row in range(1, 6)])
    flow.busy = 1.0
    relieved = asyncio.ensure_future(flow.relief(publishing=True))
    await asyncio.sleep(0)
    flow.handed([stored(1)])  # 20 left: still past the half
    await asyncio.sleep(0)
    assert not relieved.done()
    flow.handed([stored(2)])  # 15
    await asyncio.wait_for(relieved, 5)
    assert not flow.congested(publishing=True)


async def test_commits_that_fail_are_no_congestion_and_no_reason_to_commit_at_once() -> None:
    ok = False
    flow = Flow(40, 3600.0, lambda: ok)
    for i in range(5):
        flow.put(batch(i))
    assert flow.waiting == 25 and not flow.congested() and not flow.commit_soon.is_set()
    ok = True
    flow.put(batch(5))
    assert flow.congested() and flow.commit_soon.is_set()


async def test_past_the_bound_the_oldest_are_shed_once_logged_and_counted(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.buffer.queue")
    flow = Flow(20, 3600.0, lambda: True)
    flow.put(batch(0))
    flow.put(batch(1))
    taken, dropped = flow.take()  # a commit runs with 10 readings
    assert (len(taken), dropped, flow.uncommitted) == (2, 0, 10)
    for i in range(2, 6):
        flow.put(batch(i))
    assert [b.ts for b in flow.batches] == [4, 5] and flow.dropped == 10 and flow.uncommitted == 20
    flow.give_back(taken)  # the commit failed: its batches wait again, first, and the bound holds
    assert [b.ts for b in flow.batches] == [0, 1, 4, 5] and flow.dropped == 10
    taken, dropped = flow.take()
    flow.committed(dropped, [])
    flow.end_dropping()
    assert flow.dropped == 0 and flow.uncommitted == 0
    messages = [r.message for r in caplog.records]
    assert sum("dropping the oldest" in m for m in messages) == 1
    assert sum("stopped dropping" in m for m in messages) == 1
