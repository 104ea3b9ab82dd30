"""How much the masks drawn from text-token and from visual-token statistics overlap (the paper's Fig. 1b),
as a table: per pathway and sparsity, the intersection over union of the two pools' masks over all
linears (least, median, most) and per kind of linear (mean), beside the IoU of two independent random
masks of the same sparsity. ``probe table`` writes it for a Table 1 grid as ``<name>_mask_iou.md`` from
``mask_iou.csv``.
"""

from __future__ import annotations

import pandas as pd

from analysis.figures import random_mask_iou


def linear_kind(name: str) -> str:
    """The kind of a linear from its key (``layers.3.mlp.down_proj`` -> ``down_proj``)."""
    return name.rsplit(".", 1)[-1]


def iou_summary(iou: pd.DataFrame) -> pd.DataFrame:
    """Per pathway and sparsity: the number of linears, the least, median and most IoU, the mean per kind of
    linear, and the random-mask IoU. ``iou`` has columns pathway, sparsity, linear, iou."""
    rows = []
    kinds = list(dict.fromkeys(linear_kind(name) for name in iou.linear))
    for (pathway, sparsity), group in iou.groupby(["pathway", "sparsity"], sort=False):
        by_kind = group.groupby(group.linear.map(linear_kind)).iou.mean()
        rows.append({"pathway": pathway, "sparsity": f"{float(sparsity):.0%}", "linears": len(group),
                     "least": group.iou.min(), "median": group.iou.median(), "most": group.iou.max(),
                     **{f"mean {kind}": by_kind.get(kind, float("nan")) for kind in kinds},
                     "random masks": random_mask_iou(float(sparsity))})
    return pd.DataFrame(rows)


def iou_markdown(iou: pd.DataFrame) -> str:
    """:func:`iou_summary` as a Markdown table with one sentence saying what its numbers are."""
    summary = iou_summary(iou)
    header = list(summary.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    lines += ["", "Intersection over union of the entries that the text-pool and the visual-pool masks prune, per "
              "linear of the pathway's blocks; random masks: two independent masks of the same sparsity, "
              "s / (2 − s). Descriptive: one mask per pool, no test."]
    return "\n".join(lines) + "\n"
