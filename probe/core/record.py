"""The run record: everything a pruning run did, in one format that the CLI, the grid, notebooks and
``analysis/`` all write and read (``manifest.json`` of a checkpoint, ``cells/<id>.json`` of a grid)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.core.manifest import package_versions, process_code_revision, write_json_atomic
from probe.errors import ProbeError

RECORD_VERSION = 2


def linear_key(block: int, name: str) -> str:
    """How a linear is named in allocations and records: ``layers.<block>.<name>``."""
    return f"layers.{block}.{name}"


def block_of(key: str) -> int:
    """The block index in a :func:`linear_key`."""
    return int(key.split(".")[1])


class RecordError(ProbeError):
    """A run record that is missing or lacks what is asked of it."""


@dataclass
class RunRecord:
    """Settings, calibration, what was pruned and chosen, timings, memory and versions of one run."""

    settings: dict[str, Any]  # the PruneConfig, each axis with its settings
    method: str  # the settings' label: a preset name or tokens+scorer+allocation
    model: str = ""
    family: str = ""
    dtype: str = ""
    device: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)  # its source and the ids of the samples drawn
    sparsity: dict[str, float] = field(default_factory=dict)  # achieved, per matrix
    parameters: dict[str, int] = field(default_factory=dict)  # weights per matrix
    target_sparsity: dict[str, float] = field(default_factory=dict)  # asked by the allocation, per matrix
    block_sparsity: dict[str, float] = field(default_factory=dict)  # achieved per block, weighted by weights
    allocation: dict[str, Any] = field(default_factory=dict)  # what the allocation measured
    selector_blocks: list[dict] = field(default_factory=list)  # per block, what a ranking selector chose
    unobserved: list[str] = field(default_factory=list)  # matrices no selected token reached: pruned by magnitude
    timings: dict[str, float] = field(default_factory=dict)  # seconds: capture, prepass, prune, wall
    peak_memory_bytes: int = 0
    versions: dict[str, str | None] = field(default_factory=package_versions)
    code: dict[str, Any] = field(default_factory=process_code_revision)  # the commit (and dirty flag) or version
    context: dict[str, Any] = field(default_factory=dict)  # where the run belongs: command, grid cell, pathway
    version: int = RECORD_VERSION

    @classmethod
    def from_report(cls, config: Any, report: Any, **fields: Any) -> RunRecord:
        """A record of ``config`` (a PruneConfig) and the engine's ``report``."""
        timings = {"prune": report.seconds, "prepass": report.prepass_seconds, **fields.pop("timings", {})}
        blocks: dict[int, list[float]] = {}
        for key, value in report.sparsity.items():
            size = report.parameters.get(key, 1)
            totals = blocks.setdefault(block_of(key), [0.0, 0.0])
            totals[0] += value * size
            totals[1] += size
        return cls(settings=dataclasses.asdict(config), method=config.label, sparsity=dict(report.sparsity),
                   parameters={key: int(report.parameters[key]) for key in report.sparsity
                               if key in report.parameters},
                   target_sparsity=dict(report.target_sparsity), allocation=dict(report.allocation),
                   block_sparsity={str(b): zeros / total for b, (zeros, total) in sorted(blocks.items())},
                   selector_blocks=list(report.selector_blocks), unobserved=list(report.unobserved), timings=timings,
                   peak_memory_bytes=report.peak_memory_bytes, **fields)

    @property
    def mean_sparsity(self) -> float:
        """Unweighted mean of the achieved sparsity over the pruned matrices."""
        return sum(self.sparsity.values()) / max(len(self.sparsity), 1)

    @property
    def weighted_sparsity(self) -> float | None:
        """The share of all pruned matrices' weights that are zero (each matrix weighted by its size); None
        for a record that does not hold the matrices' sizes."""
        if not self.sparsity or set(self.sparsity) - set(self.parameters):
            return None
        total = sum(self.parameters[key] for key in self.sparsity)
        return sum(value * self.parameters[key] for key, value in self.sparsity.items()) / max(total, 1)

    def sparsity_summary(self) -> str:
        """``sparsity 0.500 of all pruned weights`` and, where it differs, the unweighted mean over matrices."""
        weighted, mean = self.weighted_sparsity, self.mean_sparsity
        if weighted is None:
            return f"mean sparsity {mean:.3f} over {len(self.sparsity)} matrices (unweighted)"
        text = f"sparsity {weighted:.3f} of all pruned weights"
        if abs(weighted - mean) >= 0.0005:
            text += f" (unweighted mean over the {len(self.sparsity)} matrices {mean:.3f})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "mean_sparsity": self.mean_sparsity,
                "weighted_sparsity": self.weighted_sparsity}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        if "settings" not in data:
            raise RecordError("not a run record (it has no settings)")
        # a record written before a field existed says nothing of it (never this machine's code or versions)
        return cls(**{"code": {}, "versions": {}, **{k: v for k, v in data.items() if k in known}})

    def write(self, path: Path) -> None:
        """Write the record as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, source: Path) -> RunRecord:
        """The record in ``source``: a run record (.json) or a folder holding ``manifest.json``."""
        return cls.from_dict(_load(source))


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``, or a :class:`RecordError` saying that ``path`` is not ``what``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RecordError(f"{path} is not {what} (not valid JSON)") from None


def _load(source: Path) -> dict[str, Any]:
    path = source / "manifest.json" if source.is_dir() else source
    if not path.is_file():
        raise RecordError(f"no pruning record at {path}")
    return read_json(path, "a JSON pruning record")


def read_selector_blocks(source: Path) -> list[dict]:
    """Per-block records of a ranking token selector (ATV: mean drift, K, visual tokens kept) from a run
    record or a folder holding a manifest; records written before version 2 name them ``atv_blocks``."""
    data = _load(source)
    blocks = data.get("selector_blocks") or data.get("atv_blocks") or []
    if not blocks:
        path = source / "manifest.json" if source.is_dir() else source
        raise RecordError(f"{path} holds no ATV block records (not an ATV run)")
    return blocks


def kept_visual_total(source: Path) -> int:
    """Visual tokens an ATV run kept over all blocks and samples (see :func:`read_selector_blocks`)."""
    return sum(int(block["visual_kept"]) for block in read_selector_blocks(source))
