"""Ctrl-C that no library can swallow.

Python raises KeyboardInterrupt wherever the main thread happens to be; when that is a ``__del__`` (a
``datasets.Dataset`` being collected, for one), the exception is printed as "Exception ignored" and the
run goes on. Inside :func:`interruptible`, SIGINT still raises at once and is also remembered, and
:func:`raise_if_interrupted`, called between the steps of long work (cells, tasks, blocks, progress
steps), raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

_requested = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Remember SIGINT for the duration (main thread only; elsewhere signals go to the main thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_sigint)
    _requested.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if SIGINT arrived inside :func:`interruptible`, even if it was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt
