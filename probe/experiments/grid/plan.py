"""What a grid run will do before any model work: the settings checked against the folder's manifest,
the calibration draws selected, the cells left to run; then the context they share (model, captures)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from filelock import FileLock

from probe.calibration.calibrate import capture_calibration
from probe.calibration.capture import CapturedSample
from probe.core.manifest import (
    check_output_dir,
    package_versions,
    process_code_revision,
    write_json_atomic,
    write_text_atomic,
)
from probe.core.record import read_json
from probe.data.calibration import select
from probe.errors import ProbeError
from probe.evaluation.harness import resolve_tasks
from probe.experiments.grid.config import (
    DENSE_KEYS,
    RESUME_VERSIONS,
    RUN_ONLY,
    Cell,
    GridConfig,
    GridConfigError,
    cells,
    needs_earlier_cell,
)
from probe.experiments.grid.store import append_cell_rows, cell_path, finished_cells, read_csv_or_empty
from probe.models.devices import check_device, machine_description
from probe.models.loading import LoadedModel, check_model_ref, load_model, model_config, parse_dtype
from probe.models.vision_cache import VisionFeatureCache
from probe.token_pruning.base import make_pruner
from probe.token_pruning.runtime import check_token_method


def _check_same_settings(config: GridConfig, manifest: Path, calibration_ids: dict[int | None, list[str]],
                         proxy_ids: list[str] | None = None) -> None:
    """A rerun may only resume results made with the same settings (the output folder aside; calibration
    draws may be added after the grid's own), the same calibration samples in every draw (a calibration
    source whose content changed is refused too) and the same versions of the packages that decide the
    numbers (:data:`RESUME_VERSIONS`)."""
    if not manifest.is_file():
        return
    stored = read_json(manifest, "a grid manifest")
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict) or "grid" not in stored["config"]:
        raise GridConfigError(f"{manifest.parent} holds another kind of run (its manifest.json is not a grid's, e.g. "
                              "a pruned checkpoint); choose another output folder")
    before = stored["config"]
    now = asdict(config)
    added = ("calib_seeds", "metrics")  # checked below: a grid may add draws and metrics
    if "kl" not in before.get("metrics", ["tasks"]):
        added += ("proxy_samples",)  # the proxy's own setting counts once the proxy has scored cells
    changed = sorted(k for k in now if k not in (*RUN_ONLY, *added) and k in before and before[k] != now[k])
    default = [config.default_draw]
    earlier, later = before.get("calib_seeds") or default, config.calib_seeds or default
    if later[:len(earlier)] != earlier:
        changed.append(f"calib_seeds {earlier} there, {later} here (draws may only be added after the grid's own)")
    if any(m not in now["metrics"] for m in before.get("metrics", ["tasks"])):
        changed.append(f"metrics {before.get('metrics', ['tasks'])} there, {now['metrics']} here (metrics may only "
                       "be added)")
    if proxy_ids and stored.get("proxy_ids") and stored["proxy_ids"] != proxy_ids:
        changed.append("the proxy metric's held-out samples (a new calibration draw took some of them)")
    if "calibration_ids" in stored and stored["calibration_ids"] != calibration_ids[None]:
        changed.append("calibration samples")
    for seed, ids in (stored.get("calibration_draws") or {}).items():
        if int(seed) in calibration_ids and calibration_ids[int(seed)] != ids:
            changed.append(f"calibration samples of draw {seed}")
    versions, theirs = package_versions(), stored.get("versions") or {}
    changed += [f"{name} {theirs[name]} there, {versions.get(name)} here" for name in RESUME_VERSIONS
                if name in theirs and theirs[name] != versions.get(name)]
    if changed:
        raise GridConfigError(
            f"{manifest.parent} holds results made with other settings ({', '.join(changed)}); "
            "choose another output folder or remove it"
        )


@dataclass
class GridContext:
    """What every cell of a grid shares: the model, its captured calibration (``capture(draw)``, the last
    draw's kept), the tasks, a vision cache."""

    config: GridConfig
    base: LoadedModel
    capture: Callable[[int | None], list[CapturedSample]]
    tasks: list[str]
    cache: VisionFeatureCache
    heldout: tuple[list, list] | None = None  # the proxy metric's image-text and text-only conversations
    _captured: tuple[int | None, list[CapturedSample]] | None = None
    _proxy: tuple[list, list] | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def captured(self, draw: int | None = None) -> list[CapturedSample]:
        """The calibration samples of ``draw`` (None: the default draw) captured on the model; only one
        draw's are held at a time."""
        if self._captured is None or self._captured[0] != draw:
            self._captured = None  # the previous draw's activations go before the next are captured
            self._captured = (draw, self.capture(draw))
        return self._captured[1]

    def proxy(self, show_progress: bool = True) -> tuple[list, list]:
        """The proxy metric's held-out conversations as model inputs and the dense model's answer
        distributions on them, computed once."""
        if self._proxy is None:
            from probe.evaluation.divergence import dense_answers, proxy_items

            if self.heldout is None:
                raise GridConfigError("this grid's plan holds no held-out conversations (metrics has no kl)")
            items = proxy_items(self.base.adapter, self.base.processor, *self.heldout)
            self._proxy = (items, dense_answers(self.base.model, items, show_progress))
        return self._proxy


@dataclass
class GridPlan:
    """A grid checked before any model work: its tasks, calibration draws and the cells still to run."""

    config: GridConfig
    tasks: list[str]
    selections: dict[int | None, Any]  # per draw, the validated samples (probe.data.calibration.select)
    todo: list[Cell]
    heldout: tuple[list, list] | None = None  # the proxy metric's image-text and text-only conversations

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def select_cells(planned: list[Cell], only: Sequence[str], finished: set[str]) -> list[Cell]:
    """The cells of ``planned`` named in ``only`` (cell ids as in ``results.csv``), in the order named; a
    fixed-budget ATV cell needs its plain ``atv`` cell named too or among the ``finished`` ones."""
    by_id = {c.cell_id: c for c in planned}
    unknown = [name for name in only if name not in by_id]
    if unknown:
        raise GridConfigError(f"no cell {', '.join(map(repr, unknown))} in this grid; its cells are "
                              f"{', '.join(by_id)}")
    chosen = list(dict.fromkeys(only))
    for name in chosen:
        cell = by_id[name]
        earlier = f"atv/{cell.setting}"
        if needs_earlier_cell(cell) and earlier not in chosen and earlier not in finished:
            raise GridConfigError(f"{name} keeps as many visual tokens as the cell {earlier!r}: name that cell too")
    return [by_id[name] for name in chosen]


@dataclass
class GridCheck:
    """A grid checked without writing anything: its tasks, calibration draws, held-out conversations, the
    cells planned and those already done."""

    tasks: list[str]
    selections: dict[int | None, Any]
    heldout: tuple[list, list] | None
    planned: list[Cell]
    done: set[str]

    def calibration_ids(self) -> dict[int | None, list[str]]:
        return {draw: [s.sample_id for s in chosen.samples] for draw, chosen in self.selections.items()}

    def proxy_ids(self) -> list[str] | None:
        return [s.sample_id for group in self.heldout for s in group] if self.heldout else None


def check_grid(config: GridConfig, only: Sequence[str] | None = None) -> GridCheck:
    """Check everything a grid needs (device, model, tasks, calibration and held-out data, an output folder
    made with the same settings, the dense cell of ``dense_from``) and write nothing (``probe grid
    --dry-run``); the cells without rows are still to run (with ``only``, just those of the named cells,
    in the order named)."""
    out = Path(config.out)
    check_output_dir(out, marker="manifest.json")
    done = finished_cells(out, config.metrics)
    planned = select_cells(cells(config), only, done) if only else cells(config)
    check_device(config.device)
    check_model_ref(config.model)
    check_token_methods(config)
    tasks = resolve_tasks(config.tasks)
    selections = calibration_selections(config)  # every data check before any model work
    checked = GridCheck(tasks, selections, heldout_conversations(config, selections), planned, done)
    _check_same_settings(config, out / "manifest.json", checked.calibration_ids(), checked.proxy_ids())
    if config.dense_from and "dense" not in finished_cells(out):
        _dense_source(config, Path(config.dense_from))
    return checked


def plan_grid(config: GridConfig, only: Sequence[str] | None = None) -> GridPlan:
    """:func:`check_grid`, then take the dense cell from ``dense_from`` where the config names one and
    write the manifest."""
    out = Path(config.out)
    checked = check_grid(config, only)
    tasks, selections, heldout, planned, done = (checked.tasks, checked.selections, checked.heldout,
                                                 checked.planned, checked.done)
    calibration_ids, proxy_ids = checked.calibration_ids(), checked.proxy_ids()
    if config.dense_from and "dense" not in finished_cells(out):
        import_dense_cell(config, Path(config.dense_from))
        done = finished_cells(out, config.metrics)
    write_json_atomic(out / "manifest.json", {
        "config": asdict(config), "tasks": tasks, "calibration_ids": calibration_ids[None],
        "calibration_draws": {str(draw): ids for draw, ids in calibration_ids.items() if draw is not None},
        **({"proxy_ids": proxy_ids} if proxy_ids else {}),
        "versions": package_versions(), "code": process_code_revision(),
        "machine": machine_description(config.device)})
    return GridPlan(config, tasks, selections, [c for c in planned if c.cell_id not in done], heldout)


def calibration_selections(config: GridConfig) -> dict[int | None, Any]:
    """Every calibration draw of the grid, loaded and checked (no model needed), by draw (None: the default)."""
    selections = {draw: select(config.calibration(draw)) for draw in config.draws()}
    if None not in selections:
        selections[None] = select(config.calibration())
    return selections


def heldout_conversations(config: GridConfig, selections: dict[int | None, Any]) -> tuple[list, list] | None:
    """The proxy metric's held-out image-text and text-only conversations (None without ``kl`` in
    ``metrics``), none of them taken by a calibration draw of ``selections``."""
    if "kl" not in config.metrics:
        return None
    from probe.data.heldout import heldout_image_samples, heldout_text_samples

    drawn = {s.sample_id for chosen in selections.values() for s in chosen.samples}
    return (heldout_image_samples(config.calibration(), config.proxy_samples, config.seed, drawn),
            heldout_text_samples(config.proxy_samples, config.seed))


def import_dense_cell(config: GridConfig, source: Path) -> None:
    """Take the dense cell of the grid in ``source`` (its rows, per-item scores and record) as this grid's,
    after checking that it was scored with the same :data:`DENSE_KEYS`: on a large model the dense
    evaluation is the same hours of work in every grid."""
    rows = _dense_source(config, source)
    out = Path(config.out)
    record = json.loads(cell_path(source, "dense").read_text())
    record.setdefault("context", {})["dense_from"] = str(source)
    write_text_atomic(cell_path(out, "dense", "items", ".csv"), cell_path(source, "dense", "items", ".csv").read_text())
    write_json_atomic(cell_path(out, "dense"), record)
    append_cell_rows(out / "results.csv", "dense", rows.to_dict("records"))


def _dense_source(config: GridConfig, source: Path) -> pd.DataFrame:
    """The dense rows of the grid in ``source``, checked to be a finished dense cell scored with the same
    :data:`DENSE_KEYS` as ``config``'s."""
    manifest = source / "manifest.json"
    files = [manifest, source / "results.csv", cell_path(source, "dense", "items", ".csv"), cell_path(source, "dense")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GridConfigError(f"dense_from: {source} has no finished dense cell (missing {', '.join(missing)})")
    theirs = json.loads(manifest.read_text()).get("config", {})
    ours = asdict(config)
    changed = [k for k in DENSE_KEYS if theirs.get(k) != ours[k]]
    if changed:
        named = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in changed)
        raise GridConfigError(f"dense_from: {source}'s dense cell was scored with other settings ({named})")
    rows = read_csv_or_empty(source / "results.csv")
    rows = rows[rows.cell == "dense"].dropna(axis=1, how="all")
    if rows.empty:
        raise GridConfigError(f"dense_from: {source / 'results.csv'} holds no dense rows")
    return rows


def open_context(plan: GridPlan, show_progress: bool = True, shared_calibration: bool = False) -> GridContext:
    """Load the grid's model; each calibration draw is captured when a cell first needs it. With
    ``shared_calibration`` (cells running as separate jobs), the first job to need a draw captures it into
    ``calibration.pt`` (``calibration-calib<seed>.pt`` for other draws) in the output folder, under a
    file lock, and every other job loads it from there."""
    config = plan.config
    base = load_model(config.model, dtype=parse_dtype(config.dtype), device=config.device,
                      max_pixels=config.max_pixels)
    check_token_methods(config, base.model)
    cache = VisionFeatureCache()

    def capture(draw: int | None) -> list[CapturedSample]:
        selected = plan.selections.get(draw) or select(config.calibration(draw))
        return capture_calibration(base, selected, store_device=config.device, show_progress=show_progress,
                                   vision_cache=cache)

    def shared(draw: int | None) -> list[CapturedSample]:
        path = plan.out / ("calibration.pt" if draw is None else f"calibration-calib{draw}.pt")
        plan.out.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.is_file():
                return torch.load(path, map_location=config.device, weights_only=False)
            captured = capture(draw)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(captured, tmp)
            tmp.replace(path)
            return captured

    ctx = GridContext(config, base, shared if shared_calibration else capture, plan.tasks, cache, plan.heldout)
    pruned = [c for c in plan.todo if c.pathway != "dense" and c.method != "dense"]
    if pruned and not shared_calibration:
        ctx.captured(pruned[0].draw)  # before any cell: a capture that fails does so before hours of scoring
    return ctx


def check_token_methods(config: GridConfig, model: torch.nn.Module | None = None) -> None:
    """Raise :class:`GridConfigError` before any cell if a token method of the grid cannot run on the model:
    the loaded ``model``, else the grid model's config where it is at hand without loading weights (see
    :func:`probe.models.loading.model_config`; without one, the check waits for the loaded model)."""
    pruners = {spec: pruner for spec in config.token_methods if (pruner := make_pruner(spec)) is not None}
    if not pruners:
        return
    found = model.config if model is not None else model_config(config.model)
    if found is None:
        return
    layers = found.get_text_config().num_hidden_layers
    for spec, pruner in pruners.items():
        try:
            check_token_method(pruner, found.model_type, layers)
        except ProbeError as exc:
            raise GridConfigError(f"token_methods: {spec!r} cannot run on {config.model}: {exc}") from None


