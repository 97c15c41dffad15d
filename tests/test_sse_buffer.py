"""Outlets: pending frames leave as one write per flush, straight to the socket while it keeps up."""

from __future__ import annotations

import asyncio

from devbus.bus.outputs.sse.laggards import Laggards
from devbus.bus.outputs.sse.outlet import Outlet
from devbus.typefilter import TypeFilter

WAIT = 5.0


class FakeSocket:
    """A subscriber socket that records writes, or refuses them while backed up."""

    def __init__(self, *, backed_up: bool = False) -> None:
        self.backed_up = backed_up
        self.written: list[bytes] = []

    @property
    def buffered(self) -> int:
        return 0

    def __call__(self, chunk: bytes) -> bool:
        if self.backed_up:
            return False
        self.written.append(chunk)
        return True


def make_outlet(*, limit: int = 1024) -> tuple[Outlet, list[Outlet]]:
    evicted: list[Outlet] = []
    return Outlet(TypeFilter(), named=False, limit=limit, on_evict=evicted.append), evicted


async def idle_writer(outlet: Outlet) -> asyncio.Task[bytes | None]:
    """Start a stream task that waits in take(), as an SSE stream between events does."""
    task = asyncio.ensure_future(outlet.take(idle=60))
    await asyncio.sleep(0)  # one loop turn: the new task runs until it waits
    assert outlet.waiting
    return task


async def test_a_burst_leaves_in_one_socket_write() -> None:
    outlet, _ = make_outlet()
    socket = outlet.write_now = FakeSocket()
    task = await idle_writer(outlet)
    for frame in (b"a\n\n", b"b\n\n", b"c\n\n"):
        outlet.push(frame)
    assert socket.written == []  # nothing is written before the flush
    outlet.flush()
    assert socket.written == [b"a\n\nb\n\nc\n\n"]
    assert outlet.pending_bytes == outlet.unsent == 0
    assert not task.done()  # the stream's task was never woken
    outlet.close()
    assert await task is None


async def test_a_backed_up_socket_hands_the_frames_to_the_stream_task() -> None:
    outlet, _ = make_outlet()
    outlet.write_now = FakeSocket(backed_up=True)  # over its high-water mark
    task = await idle_writer(outlet)
    outlet.push(b"a\n\n")
    outlet.push(b"b\n\n")
    assert outlet.unsent == 0  # an idle stream's pending frames go out with the next flush
    outlet.flush()
    assert outlet.unsent == 6  # handed to the task, which has yet to write them
    async with asyncio.timeout(WAIT):
        assert await task == b"a\n\nb\n\n"


async def test_a_writer_busy_past_the_limit_is_evicted_and_its_frames_dropped() -> None:
    outlet, evicted = make_outlet(limit=4)
    outlet.push(b"12345")  # no task is waiting: it is still busy with an earlier write
    assert evicted == [outlet]
    assert outlet.evicted and outlet.closed
    assert outlet.pending_bytes == 0
    async with asyncio.timeout(WAIT):
        assert await outlet.take(idle=60) is None


async def test_a_backed_up_subscriber_is_behind_until_its_task_has_written_everything() -> None:
    """The signal a burst input waits on: who is behind, and a callback each time one of them moves."""
    laggards = Laggards()
    outlet = Outlet(TypeFilter(), named=False, limit=1024, on_evict=lambda _: None, laggards=laggards)
    outlet.write_now = FakeSocket(backed_up=True)
    task = await idle_writer(outlet)
    outlet.push(b"a\n\n")
    outlet.flush()
    assert laggards.behind == 1
    moves: list[int] = []
    laggards.when_moved(lambda: moves.append(laggards.behind))
    async with asyncio.timeout(WAIT):
        assert await task == b"a\n\n"  # the task takes the chunk and writes it...
    outlet.push(b"b\n\n")  # ...while more arrives for it
    async with asyncio.timeout(WAIT):
        assert await outlet.take(idle=60) == b"b\n\n"
    assert moves == [1]  # it moved, but still had more to write
    laggards.when_moved(lambda: moves.append(laggards.behind))
    task = await idle_writer(outlet)  # back for more with nothing pending: caught up
    assert moves == [1, 0]
    assert laggards.behind == 0
    outlet.close()
    assert await task is None
