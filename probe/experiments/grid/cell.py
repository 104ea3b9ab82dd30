"""One grid cell: prune (dense, an MoT pathway, or a method), score it on the tasks and the proxy
metric, and write its rows and record."""

from __future__ import annotations

import copy
import gc
import logging
from dataclasses import asdict
from typing import Any

import pandas as pd
import torch

from probe.core.interrupts import raise_if_interrupted
from probe.core.manifest import (
    write_text_atomic,
)
from probe.core.record import RunRecord
from probe.evaluation.harness import evaluate_with_items, primary_rows, token_records_path
from probe.experiments.grid.config import IOU_POOLS, PROXY_FILE, Cell
from probe.experiments.grid.plan import GridContext
from probe.experiments.grid.store import adaptive_total, append_cell_rows, cell_path, finished_cells, save_masks
from probe.experiments.task_checkpoint import TaskCheckpoint, parameter_stats, weights_fingerprint
from probe.models.devices import machine_description
from probe.models.loading import LoadedModel
from probe.pruning.engine import PruneConfig, prune
from probe.pruning.mot import PATHWAYS, prune_pathway, to_mot, weight_sharing_copy
from probe.token_pruning.base import make_pruner
from probe.token_pruning.schedule import with_token_schedule

log = logging.getLogger("probe.experiments.grid")


def run_cell(ctx: GridContext, cell: Cell, show_progress: bool = True, log_samples: bool = False) -> bool:
    """Prune (a copy of) the model as ``cell`` says, evaluate it, write its record to ``cells/`` and add its
    rows to ``results.csv``; False if another run had added them first (nothing is written twice).

    The cell's copy is freed before this returns, so the next cell's copy never sits beside it: an MoT
    probe's routing hook holds its model in a reference cycle, which only the garbage collector frees."""
    try:
        return _prune_and_score(ctx, cell, show_progress, log_samples)
    finally:
        gc.collect()


def _prune_and_score(ctx: GridContext, cell: Cell, show_progress: bool, log_samples: bool) -> bool:
    config, base, out = ctx.config, ctx.base, ctx.out
    # an MoT cell writes only into its pruned pathway's own copies; every other cell needs a whole copy
    model = weight_sharing_copy(base.model) if cell.pathway in PATHWAYS else copy.deepcopy(base.model)
    context: dict[str, Any] = {"command": "grid", "grid": config.grid, "cell": cell.cell_id, "pathway": cell.pathway,
                               "machine": machine_description(config.device)}
    prune_config = None
    context["token_pruning"] = cell.token_pruning
    if cell.pathway == "all" and cell.entry is not None:
        prune_config = config.prune_config(cell.entry, cell.sparsity, cell.pattern, adaptive_total(out, cell))
        samples = ctx.captured(cell.draw) if prune_config.needs_calibration else []
        if prune_config.tokens == "kept":
            samples = with_token_schedule(base.model, base.adapter, samples, make_pruner(cell.token_pruning))
        report = prune(model, base.adapter, samples, prune_config, show_progress=show_progress)
    elif cell.pathway in PATHWAYS:  # table1: one MoT pathway
        probe = to_mot(model, base.adapter, config.replicate_o_proj, private=cell.pathway)
        prune_config = PruneConfig(method=config.method, sparsity=cell.sparsity, tokens=cell.pool)
        samples = ctx.captured(cell.draw)
        report = prune_pathway(probe, samples, prune_config, cell.pathway, show_progress=show_progress)
        if cell.pool in IOU_POOLS:  # kept until both are there for the IoU (large: git ignores them)
            masks = {}
            for b, layer in enumerate(base.adapter.decoder_layers(model)):
                for name, routed in probe.routed_linears(layer).items():
                    masks[f"layers.{b}.{name}"] = (getattr(routed, cell.pathway).weight == 0).cpu()
            draw = "" if cell.draw is None else f"-calib{cell.draw}"
            save_masks(out / "masks" / f"{cell.pathway}-{cell.pool}-{cell.sparsity:g}{draw}.npz", masks)
    if prune_config is not None:
        record = RunRecord.from_report(prune_config, report, model=config.model, family=base.model.config.model_type,
                                       dtype=config.dtype, device=config.device, context=context,
                                       calibration={"seed": config.default_draw if cell.draw is None else cell.draw,
                                                    "sample_ids": [s.sample_id for s in samples]})
    else:
        record = RunRecord(settings={}, method="dense", model=config.model, dtype=config.dtype, device=config.device,
                           context=context)
    settings = {"cell": cell.cell_id, "pathway": cell.pathway, "pool": cell.pool, "sparsity": cell.sparsity,
                "method": cell.method, "setting": cell.setting, "model": config.model,
                "nsamples": config.nsamples, "seed": config.seed, "limit": config.limit,
                "calib_seed": (config.default_draw if cell.draw is None else cell.draw)
                if prune_config is not None and prune_config.needs_calibration else None,
                "loglikelihood": config.loglikelihood, "token_pruning": cell.token_pruning,
                **setting_columns(prune_config)}
    appended = False
    if "kl" in config.metrics and cell.cell_id not in finished_cells(out, ["kl"]):
        fingerprint = weights_fingerprint(model)  # beside the proxy: a cell pruned again can be checked
        appended = _score_proxy(ctx, cell, model, {**settings, "weights_fingerprint": fingerprint}, show_progress)
        if not cell_path(out, cell.cell_id).is_file():  # a cell scored earlier keeps the record of that run
            record.context["weights_fingerprint"] = fingerprint
            record.write(cell_path(out, cell.cell_id))
    if "tasks" in config.metrics and cell.cell_id not in finished_cells(out):
        appended = _score_tasks(ctx, cell, model, record, settings, show_progress, log_samples)
    return appended


def _score_proxy(ctx: GridContext, cell: Cell, model: torch.nn.Module, settings: dict[str, Any],
                 show_progress: bool) -> bool:
    """The proxy metric of the cell's model on the grid's held-out conversations: per sample into
    ``proxy/<cell>.csv``, per group and metric into ``proxy.csv``."""
    from probe.evaluation.divergence import dense_proxy_scores, proxy_scores, summarize

    items, dense = ctx.proxy(show_progress)
    if cell.pathway == "dense" and cell.token_pruning == "none":  # the model the kept answers came from
        per_sample = dense_proxy_scores(items, dense)
    else:
        per_sample = proxy_scores(model, items, dense, show_progress)
    write_text_atomic(cell_path(ctx.out, cell.cell_id, "proxy", ".csv"),
                      per_sample.assign(cell=cell.cell_id).to_csv(index=False))
    rows = [{**settings, **row} for row in summarize(per_sample).to_dict("records")]
    return append_cell_rows(ctx.out / PROXY_FILE, cell.cell_id, rows)


def _score_tasks(ctx: GridContext, cell: Cell, model: torch.nn.Module, record: RunRecord, settings: dict[str, Any],
                 show_progress: bool, log_samples: bool) -> bool:
    """The cell's task scores: per item into ``items/<cell>.csv``, per task into ``results.csv``; the
    record into ``cells/<cell>.json``."""
    config, out = ctx.config, ctx.out
    scores, items, checkpoint = _evaluate_cell(ctx, cell, model, show_progress, log_samples)
    record.context["weights_fingerprint"] = checkpoint.fingerprint
    if checkpoint.resumed:
        record.context["resumed"] = checkpoint.resumed
    if config.grid == "table2":
        settings = {**settings, **_request_flops(ctx, model, cell)}
    rows = [{**settings, **row} for row in primary_rows(scores).to_dict("records")]
    primary = primary_rows(scores)[["task", "metric"]].merge(items, on=["task", "metric"])
    write_text_atomic(cell_path(out, cell.cell_id, "items", ".csv"),
                      primary.assign(cell=cell.cell_id)[["cell", "task", "doc_id", "value"]].to_csv(index=False))
    record.write(cell_path(out, cell.cell_id))
    appended = append_cell_rows(out / "results.csv", cell.cell_id, rows)
    checkpoint.clear()
    return appended


def _evaluate_cell(ctx: GridContext, cell: Cell, model: torch.nn.Module, show_progress: bool,
                   log_samples: bool) -> tuple[pd.DataFrame, pd.DataFrame, TaskCheckpoint]:
    """Score the cell's model task by task, each task's scores checkpointed under ``partial/<cell>/`` as it
    finishes, so that a rerun after a stop scores only the tasks left (on the same pruned weights)."""
    config, base, out = ctx.config, ctx.base, ctx.out
    checkpoint = TaskCheckpoint(cell_path(out, cell.cell_id, "partial", ""), parameter_stats(model)).open()
    if checkpoint.finished():
        log.info("%s: %s already scored, resuming", cell.cell_id, ", ".join(checkpoint.finished()))
    loaded = LoadedModel(model, base.processor, base.adapter, base.ref)
    for task in ctx.tasks:
        raise_if_interrupted()
        if checkpoint.load(task) is None:
            scores, items = evaluate_with_items(
                loaded, [task], config.limit, show_progress=show_progress,
                vision_cache=ctx.cache if cell.token_pruning == "none" else None, seed=config.seed,
                loglikelihood=config.loglikelihood, batch_size=config.batch_size,
                samples_out=checkpoint.samples_path(task) if log_samples else None,
                token_pruning=None if cell.token_pruning == "none" else cell.token_pruning)
            checkpoint.save(task, scores, items)
    # read back from the checkpoints, so a resumed cell and an uninterrupted one go through the same files
    finished = [checkpoint.load(task) for task in ctx.tasks]
    if log_samples:
        samples_out = cell_path(out, cell.cell_id, "samples", ".jsonl")
        write_text_atomic(samples_out, checkpoint.joined_lines(ctx.tasks, "samples.jsonl"))
        if cell.token_pruning != "none":
            write_text_atomic(token_records_path(samples_out),
                              checkpoint.joined_lines(ctx.tasks, "samples.tokens.jsonl"))
    return (pd.concat([f[0] for f in finished], ignore_index=True),
            pd.concat([f[1] for f in finished], ignore_index=True), checkpoint)


def _request_flops(ctx: GridContext, model: torch.nn.Module, cell: Cell) -> dict[str, float]:
    """FLOPs of one fixed request (a grey 64 x 64 image and a short question) on the cell's model and token
    method, for retention-vs-FLOPs figures."""
    from PIL import Image

    from probe.evaluation.flops import count_flops, image_request
    from probe.token_pruning.runtime import TokenPruningRuntime

    inputs = image_request(model, ctx.base.adapter, ctx.base.processor, Image.new("RGB", (64, 64), (128, 128, 128)),
                           "Describe the image.")
    pruner = make_pruner(cell.token_pruning)
    runtime = TokenPruningRuntime(pruner, ctx.base.adapter) if pruner is not None else None
    return count_flops(model, ctx.base.adapter, inputs, runtime)


def setting_columns(config: PruneConfig | None) -> dict[str, Any]:
    """The axes of a cell's pruning settings and every setting of each chosen entry, one column each
    (``tokens.alpha``, ``scorer.use_variant``, ``allocation.lam``, ...); none for the dense cell."""
    if config is None:
        return {}
    columns: dict[str, Any] = {"tokens": config.tokens, "scorer": config.scorer, "allocation": config.allocation,
                               "pattern": config.pattern, "true_sequential": config.true_sequential}
    for axis in ("tokens", "scorer", "allocation"):
        for name, value in asdict(getattr(config, f"{axis}_settings")).items():
            columns[f"{axis}.{name}"] = value
    return columns


