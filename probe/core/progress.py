"""Progress bars for long loops (rich in a terminal, a line per tenth of the work in a log file), silent
when disabled."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from rich import get_console
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from probe.core.interrupts import raise_if_interrupted


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        raise_if_interrupted()
        if self._progress is not None:
            self._progress.advance(self._task, n)


def _console() -> Console | None:
    """In Jupyter without ipywidgets, rich's live bars only warn; print them as plain text there instead."""
    if get_console().is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        return Console(force_jupyter=False)
    return None


class LogLines:
    """Progress written as plain lines for a log file: one line each time another tenth of ``total`` is done."""

    def __init__(self, description: str, total: int, stream: TextIO | None = None) -> None:
        self.description, self.total, self.done = description, total, 0
        self._stream = stream
        self._tenths_reported = 0
        self._started = time.monotonic()

    def advance(self, n: int = 1) -> None:
        raise_if_interrupted()
        self.done += n
        tenths = min(10, self.done * 10 // self.total) if self.total > 0 else 0
        if tenths > self._tenths_reported:
            self._tenths_reported = tenths
            minutes, seconds = divmod(int(time.monotonic() - self._started), 60)
            stream = self._stream or sys.stderr
            print(f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}), "
                  f"{minutes}:{seconds:02d} elapsed", file=stream, flush=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[_Bar | LogLines]:
    """A bar with ``total`` steps; ``advance()`` it once per step. Where the output is not a terminal (a
    background run writing to a log, a cluster job), progress comes as :class:`LogLines`."""
    if not enabled:
        yield _Bar(None, None)
        return
    console = get_console()
    if not console.is_terminal and not console.is_jupyter:
        yield LogLines(description, total)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False, console=_console()) as progress:
        yield _Bar(progress, progress.add_task(description, total=total))


# lmms-eval modules that create tqdm bars with an explicit ``disable=`` (which TQDM_DISABLE cannot override)
LMMS_EVAL_BAR_MODULES = ("lmms_eval.evaluator", "lmms_eval.api.task")


def _silent_tqdm(tqdm_class):  # noqa: ANN001, ANN202
    def make(*args, **kwargs):  # noqa: ANN202
        kwargs["disable"] = True
        return tqdm_class(*args, **kwargs)

    return make


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Silence the progress bars of the libraries we call (lmms-eval's tqdm bars, datasets' split
    generation and Parquet writing, transformers' weight loading and saving) while ``enabled``; restores
    everything afterwards."""
    if not enabled:
        yield
        return
    import datasets
    from transformers.utils import logging as transformers_logging

    previous = os.environ.get("TQDM_DISABLE")
    bars_were_on = datasets.is_progress_bar_enabled()
    transformers_bars_were_on = transformers_logging.is_progress_bar_enabled()
    os.environ["TQDM_DISABLE"] = "1"  # tqdm reads it whenever a bar is created without disable=
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    patched = []
    for name in LMMS_EVAL_BAR_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "tqdm"):
            patched.append((module, module.tqdm))
            module.tqdm = _silent_tqdm(module.tqdm)
    try:
        yield
    finally:
        for module, original in patched:
            module.tqdm = original
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
        if bars_were_on:
            datasets.enable_progress_bars()
        if transformers_bars_were_on:
            transformers_logging.enable_progress_bar()
