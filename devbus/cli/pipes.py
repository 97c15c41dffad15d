"""A command whose stdout's reader has gone ends at once, like any filter, even on a quiet bus.

A write to a pipe nobody reads fails (EPIPE), but `devbus listen --json | head -n 2` on a bus
that then stays quiet writes nothing more: it would only learn that `head` has exited at the
next event, which may never come. So a thread watches stdout with ``poll()``: the kernel
reports POLLERR on the write end of a pipe once no reader is left, and POLLHUP on a terminal
or socket that hung up. Those two are reported whatever events are asked for, so the thread
asks for none and sleeps until one comes (GNU ``tail -f`` watches its output the same way).
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

__all__ = ["ReaderGone", "exit_when_stdout_closes", "on_stdout_closed"]

_GONE = select.POLLERR | select.POLLHUP


class ReaderGone(BaseException):
    """Raised in the main thread once stdout's reader has gone.

    Not an OSError, so that code reading the bus does not take it for a network error,
    and, like KeyboardInterrupt, not an Exception, so that nothing swallows it on the way.
    """


def on_stdout_closed(callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback`` (from a thread) once stdout's reader has gone; return what stops watching.

    Nothing is watched when stdout is not a file descriptor (an in-process test runner)
    or is a regular file or ``/dev/null``, whose readers never go.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return lambda: None
    wake_read, wake_write = os.pipe()
    poller = select.poll()
    poller.register(fd, 0)
    poller.register(wake_read, select.POLLIN)

    def watch() -> None:
        while True:
            for ready, events in poller.poll():
                if ready == wake_read:
                    return
                if events & _GONE:
                    callback()
                    return
                if events & select.POLLNVAL:
                    return  # stdout was closed in this process: nothing left to watch

    watcher = threading.Thread(target=watch, name="devbus stdout watch", daemon=True)
    watcher.start()

    def stop() -> None:
        os.write(wake_write, b"x")  # the read end stays open until the thread has ended
        watcher.join()
        os.close(wake_read)
        os.close(wake_write)

    return stop


@contextlib.contextmanager
def exit_when_stdout_closes() -> Iterator[None]:
    """Run the body; once stdout's reader has gone, end it quietly with exit status 0.

    The main thread may be blocked reading the bus, so the watcher sends it SIGPIPE,
    whose handler raises ReaderGone there: the blocked read is interrupted. A write that
    fails with EPIPE (BrokenPipeError; the kernel sends SIGPIPE then too) ends it the same way.
    """
    main = threading.main_thread()
    if threading.current_thread() is not main or main.ident is None:
        yield  # signals reach the main thread only: a closed pipe is seen at the next write
        return
    ident = main.ident
    armed = True

    def raise_broken_pipe(signum: int, frame: FrameType | None) -> None:
        nonlocal armed
        # Once only: the watcher and a failed write may both signal, and a second ReaderGone
        # raised while the first unwinds (closing the bus's connection) would print a traceback.
        if armed:
            armed = False
            raise ReaderGone

    previous = signal.signal(signal.SIGPIPE, raise_broken_pipe)
    stop_watching = on_stdout_closed(lambda: signal.pthread_kill(ident, signal.SIGPIPE))
    try:
        yield
    except (BrokenPipeError, ReaderGone):
        # One SIGPIPE may still be pending (a failed write raises and signals): let it pass.
        armed = False
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            # Python would report the broken pipe again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    finally:
        armed = False
        stop_watching()
        signal.signal(signal.SIGPIPE, previous)
