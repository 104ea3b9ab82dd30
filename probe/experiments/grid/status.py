"""What a grid says while it runs: the banner at its start and a line per finished cell with the time
left, estimated from the cells finished so far (pure: the grid's loop feeds it cell ids and seconds)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


def duration(seconds: float) -> str:
    """``seconds`` as ``1h 02m``, ``3m 05s`` or ``12s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def banner(grid: str, model: str, out: str, cells: Sequence[str], done: set[str], todo: Sequence[str]) -> str:
    """The grid's first line: what it is, how many cells, how many done and to do, where it writes."""
    kept = sum(1 for cell in cells if cell in done)
    return (f"probe grid {grid} on {model}: {len(cells)} cells, {kept} done, {len(todo)} to do, writing to {out}"
            + ("" if todo else "; nothing to do"))


@dataclass
class CellClock:
    """Times the cells of one run and estimates the time left: the mean time of the pruned cells finished
    so far (the dense cell scores without pruning, so it counts only until a pruned cell finished) times
    the cells left."""

    todo: list[str]
    now: Callable[[], float] = time.monotonic
    _times: dict[str, float] = field(default_factory=dict)
    _started: float | None = None

    def start(self) -> None:
        self._started = self.now()

    def finished(self, cell: str) -> str:
        """Record ``cell`` as finished now; the progress line to show."""
        seconds = self.now() - (self._started if self._started is not None else self.now())
        self._times[cell] = seconds
        self._started = self.now()
        left = [c for c in self.todo if c not in self._times]
        line = f"[{len(self._times)}/{len(self.todo)}] {cell} finished in {duration(seconds)}"
        if not left:
            return line + "; the grid is done"
        pruned = [t for c, t in self._times.items() if c != "dense"]
        mean = sum(pruned or self._times.values()) / len(pruned or self._times)
        return line + f"; {len(left)} to do, about {duration(mean * len(left))} left"
