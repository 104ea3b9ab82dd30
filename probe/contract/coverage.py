"""Which of transformers' image-text-to-text architectures the toolkit can prune: the family contract
(:mod:`probe.contract.check`) run on a tiny random model of each.

    python -m probe.contract.coverage            # writes results/coverage.md and results/coverage.csv

Families with a file of their own use their hand-made tiny models; every other architecture gets one
built from its config class (:mod:`probe.models.shrink`). Each row says: supported (every property
holds), refused (the method cannot apply, and why), fails (the first property that does not hold), or
not built (why no tiny model or processor could be made here); a tiny model on which the text-only forward
of the generic adapter fails is listed as failing that step, since the fault may lie in the shrinking.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from probe.contract.check import run_contract
from probe.core.manifest import write_text_atomic
from probe.errors import ProbeError
from probe.models import get_adapter, supported_families, tiny_families
from probe.models.direct import DirectProcessor
from probe.models.generic import TracingError, UnsupportedArchitectureError
from probe.models.loading import LoadedModel
from probe.models.shrink import (
    NeedsTorchvisionError,
    NoProcessorError,
    TinyModelError,
    direct_processor,
    tiny_config,
    tiny_processor,
)

RESULTS = Path(__file__).resolve().parents[2] / "results"
SUPPORTED_PAGE = RESULTS.parent / "docs" / "index.md"  # the documentation's front page lists them
SUPPORTED_MARKERS = ("<!-- coverage:start -->", "<!-- coverage:end -->")


@dataclass(frozen=True)
class Coverage:
    architecture: str
    adapter: str  # family or generic
    status: str  # supported, refused, fails, not built
    failing: str  # the first property that does not hold ("" when supported)
    reason: str
    inputs: str = ""  # the contract ran on the architecture's own processor, or on inputs built from the model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:320]}" if text else type(exc).__name__


def tiny_loaded(model_type: str) -> LoadedModel:
    """A tiny random model of ``model_type`` with its processor: the family's own where it has one."""
    from probe.models.tiny import tiny_lvlm

    if model_type in tiny_families():
        tiny = tiny_lvlm(model_type)
        return LoadedModel(tiny.model, tiny.processor, get_adapter(tiny.model), f"tiny:{model_type}")
    return tiny_from_config(tiny_config(model_type), f"tiny-config:{model_type}")


def tiny_from_config(config: Any, name: str) -> LoadedModel:
    """A random model of ``config`` (already shrunk) with the architecture's processor around a word-level
    tokenizer (:func:`probe.models.shrink.tiny_processor`)."""
    import torch
    import transformers as tf
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from probe.models.base import check_family, text_families

    model_type = config.model_type
    check_family(model_type)
    if model_type in text_families():  # a causal language model: a word-level tokenizer is its processor
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        from probe.models.tiny import word_tokenizer

        torch.manual_seed(0)
        model = getattr(tf, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])(config).eval()
        tokenizer = word_tokenizer({}, config.get_text_config().vocab_size)
        return LoadedModel(model, tokenizer, get_adapter(model), name)
    if hasattr(config, "vision_config") and config.vision_config is None:
        raise TinyModelError("its config holds no vision config (vision_config is None), so the model has no "
                             "vision tower")
    cls = getattr(tf, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type])
    torch.manual_seed(0)
    model = cls(config).eval()
    adapter = get_adapter(model)
    try:
        processor = tiny_processor(model_type, config)
    except (NeedsTorchvisionError, NoProcessorError) as exc:  # inputs built from the model itself instead
        try:
            processor = direct_processor(model, config, str(exc))
        except TinyModelError as direct:
            raise TinyModelError(f"{exc}; without it: {direct}") from None
    return LoadedModel(model, processor, adapter, name)


def cover(model_type: str) -> Coverage:
    """Build the tiny model of ``model_type`` and run the contract on it."""
    adapter = "family" if model_type in supported_families() else "generic"
    try:
        loaded = tiny_loaded(model_type)
    except TracingError as exc:
        return Coverage(model_type, adapter, "fails", "text-only forward", str(exc))
    except UnsupportedArchitectureError as exc:
        return Coverage(model_type, adapter, "refused", "structure", str(exc))
    except Exception as exc:  # noqa: BLE001 (whatever stops the build is this row's reason)
        return Coverage(model_type, adapter, "not built", "tiny model", _first_line(exc))
    row = _contract(model_type, adapter, loaded)
    if isinstance(loaded.processor, DirectProcessor):
        return dataclasses.replace(row, inputs=f"built from the model: {loaded.processor.reason}")
    if row.status == "fails" and adapter == "generic":  # the shrunk processor may disagree with the shrunk model
        why = f"with its processor, {row.failing} fails ({row.reason[:160]})"
        try:
            direct = direct_processor(loaded.model, loaded.model.config, why)
        except TinyModelError:
            return dataclasses.replace(row, inputs="processor")
        second = _contract(model_type, adapter, LoadedModel(loaded.model, direct, loaded.adapter, loaded.ref))
        if second.status == "supported":
            return dataclasses.replace(second, inputs=f"built from the model: {why}")
    return dataclasses.replace(row, inputs="processor")


def _contract(model_type: str, adapter: str, loaded: LoadedModel) -> Coverage:
    """The row of one loaded tiny model: supported, or the first property that fails."""
    try:
        rows = run_contract(loaded)
    except ProbeError as exc:
        return Coverage(model_type, adapter, "fails", "contract", str(exc))
    except Exception as exc:  # noqa: BLE001 (a property that raises fails with its error)
        return Coverage(model_type, adapter, "fails", "contract", _first_line(exc))
    failed = next((row for row in rows if row.holds is False), None)
    if failed is not None:
        return Coverage(model_type, adapter, "fails", failed.name, failed.detail)
    return Coverage(model_type, adapter, "supported", "", "")


def architectures() -> list[str]:
    """Every architecture of the installed transformers' image-text-to-text mapping, and the families."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) | set(supported_families()))


def coverage_table(names: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """One :class:`Coverage` row per architecture (default: :func:`architectures`), printed as it comes."""
    rows = []
    for name in names or architectures():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = cover(name)
        if progress:
            print(f"{row.architecture:28s} {row.status:10s} {row.failing} {row.reason[:120]}", flush=True)
        rows.append(row.__dict__)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "coverage", help="file stem of the .md and .csv")
    parser.add_argument("architectures", nargs="*", help="only these (default: all)")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    table = coverage_table(args.architectures or None)
    write_text_atomic(args.out.with_suffix(".csv"), table.to_csv(index=False))
    write_text_atomic(args.out.with_suffix(".md"), to_markdown(table))
    if args.out == RESULTS / "coverage" and SUPPORTED_PAGE.is_file():
        write_text_atomic(SUPPORTED_PAGE, with_supported_list(SUPPORTED_PAGE.read_text(), table))
    print(table.status.value_counts().to_string())


def supported_list(table: pd.DataFrame) -> str:
    """The front page's list of the architectures the table marks supported, family files first."""
    rows = table[table.status == "supported"]
    family = ", ".join(f"`{a}`" for a in sorted(rows[rows.adapter == "family"].architecture))
    generic = ", ".join(f"`{a}`" for a in sorted(rows[rows.adapter == "generic"].architecture))
    return (f"  {len(rows)} of {len(table)}; with a family file: {family}; through the generic adapter: "
            f"{generic}.")


def with_supported_list(readme: str, table: pd.DataFrame) -> str:
    """``readme`` with the text between its coverage markers replaced by :func:`supported_list`."""
    start, end = SUPPORTED_MARKERS
    if start not in readme or end not in readme:
        raise ProbeError(f"{SUPPORTED_PAGE.name} lacks the markers {start} and {end}")
    before, rest = readme.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{supported_list(table)}\n  {end}{after}"


def to_markdown(table: pd.DataFrame) -> str:
    """The coverage table with a count per status, as ``results/coverage.md`` holds it."""
    import transformers

    counts = ", ".join(f"{n} {status}" for status, n in table.status.value_counts().items())
    lines = [f"# Coverage of transformers {transformers.__version__}'s image-text-to-text architectures", "",
             f"Written by `python -m probe.contract.coverage`: {counts} of {len(table)}. "
             "Each architecture's tiny random "
             "model (the family's own where it has a file, else one built from its config class) runs the "
             "contract of `probe check`.", "",
             "| architecture | adapter | status | first failing property | reason | inputs |",
             "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        reason = str(row.reason).replace("|", "/") if isinstance(row.reason, str) else ""
        failing = row.failing if isinstance(row.failing, str) else ""
        inputs = str(row.inputs).replace("|", "/") if isinstance(row.inputs, str) else ""
        lines.append(f"| {row.architecture} | {row.adapter} | {row.status} | {failing} | {reason} | {inputs} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
