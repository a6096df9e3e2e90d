"""A run stops on SIGTERM (a scheduler, `timeout`) and SIGINT (Ctrl-C) wherever it is, waiting for data included, and
exits with 128 + the signal's number; never in the middle of writing a file.

Lightning's own SIGTERM handler only sets a flag that its loops read between steps, which never comes while the
process waits for a batch that never comes; it keeps calling a handler registered before it, so the one here still
runs."""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(SystemExit):
    """A run stopped by a signal; its exit status is 128 + the signal's number (143 for SIGTERM, 130 for SIGINT). A
    SystemExit, so no `except Exception` on the way out holds it up."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum, self.name = signum, signal.Signals(signum).name


class _State:
    def __init__(self):
        self.received: int | None = None  # the first stop signal of this run
        self.held = 0  # nesting depth of held_signals()
        self.pending: int | None = None  # a signal that came while held


_state = _State()


def _handler(signum, frame) -> None:
    _state.received = _state.received or signum
    if _state.held:
        _state.pending = signum
        return
    raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Within: SIGTERM and SIGINT raise Stopped at once in the main thread (elsewhere signals cannot be handled, and
    nothing changes). Yields the state, whose `received` tells whether a stop signal came."""
    if threading.current_thread() is not threading.main_thread():
        yield _state
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.received, _state.held, _state.pending = None, 0, None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield _state
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def held_signals():
    """Within: a stop signal waits until the block is done (a file being written is finished, never left half), then
    stops the run."""
    _state.held += 1
    try:
        yield
    finally:
        _state.held -= 1
        if not _state.held and _state.pending is not None:
            signum, _state.pending = _state.pending, None
            raise Stopped(signum)
