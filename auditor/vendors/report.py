"""A vendor report as CSV (one row per vendor, batch and vendor-and-class), JSON, or a chart.

The chart is built on `matplotlib.figure.Figure` with the Agg canvas (no pyplot state), so the API
can render it in worker threads.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from auditor.vendors.estimate import WEAK_PRIOR_LABELS

CSV_COLUMNS = (
    "level",
    "vendor",
    "batch",
    "class",
    "images",
    "estimated_error_rate",
    "ci_low",
    "ci_high",
    "flagged",
    "reviewed",
    "confirmed_error_rate",
)


def vendor_csv(report: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for level, rows in (
        ("vendor", report["items"]),
        ("batch", report["batches"]),
        ("vendor_class", report["classes"]),
    ):
        for row in rows:
            writer.writerow({"level": level, **row})
    return buffer.getvalue()


def method_line(report: dict[str, Any]) -> str:
    """How the estimates were made, in a line a reader of the table can check them against."""
    if report.get("sharpness") is None:
        return "no vendor estimates in this audit"
    share = report.get("held_out_share") or 0.0
    judged = f"{share:.0%} of labels judged by models that never saw their vendor"
    fitted = "fitted by likelihood" if report.get("sharpness_fitted") else "fixed"
    strata = report.get("confidence_strata") or 1
    noise = (
        "class-conditional noise"
        if strata == 1
        else f"error rates varying over {strata} strata of model confidence (chosen by BIC)"
    )
    return f"{judged}; sharpness {report['sharpness']} ({fitted}); {noise}"


def caution(report: dict[str, Any]) -> str | None:
    """A warning when the models that judged the vendors learned from too few labels for the
    estimates' levels to be trusted; the intervals cover sampling noise only, not this bias."""
    learned_from = report.get("held_out_training_labels")
    if learned_from is None or learned_from >= WEAK_PRIOR_LABELS:
        return None
    return (
        f"Weak estimates: the models that judged the vendors learned from only {learned_from:,} "
        f"labels (fewer than {WEAK_PRIOR_LABELS:,}). With so few, the estimates run together: "
        "on CIFAR-10N, models fitted on 1,000 labels put three vendors at 29, 31 and 43 % "
        "against a true 11, 18 and 42 %. Trust the vendors' order more than the rates; the "
        "intervals cover sampling noise only. Audit more labeled images to firm them up."
    )


def vendor_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str)


def rate_bars(axes: Axes, labels: list[str], rows: list[dict[str, Any]], title: str) -> None:
    """Estimated rates with their 95 % intervals; confirmed rates as black diamonds."""
    positions = list(range(len(rows)))
    rates = [row["estimated_error_rate"] * 100 for row in rows]
    below = [max(0.0, (row["estimated_error_rate"] - row["ci_low"]) * 100) for row in rows]
    above = [max(0.0, (row["ci_high"] - row["estimated_error_rate"]) * 100) for row in rows]
    axes.bar(positions, rates, yerr=[below, above], color="#4c78a8", capsize=4, label="estimated")
    confirmed = [
        (x, row["confirmed_error_rate"] * 100)
        for x, row in zip(positions, rows, strict=True)
        if row.get("confirmed_error_rate") is not None
    ]
    if confirmed:
        xs, ys = zip(*confirmed, strict=True)
        axes.scatter(xs, ys, marker="D", color="black", zorder=3, label="confirmed so far")
    crowded = sum(len(label) for label in labels) > 36
    axes.set_xticks(
        positions, labels, rotation=30 if crowded else 0, ha="right" if crowded else "center"
    )
    axes.set_ylabel("label error rate (%)")
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    if rows:
        axes.legend(loc="upper left", fontsize=8)


def vendor_chart(report: dict[str, Any]) -> bytes:
    """PNG: per vendor, per batch, and (with earlier audits) the trend of each vendor's rate."""
    trend = {v: points for v, points in report["trend"].items() if len(points) > 1}
    panels = 3 if trend else 2
    figure = Figure(figsize=(5 * panels, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    rate_bars(
        axes[0],
        [row["vendor"] for row in report["items"]],
        report["items"],
        f"Vendors, audit {report['audit_id']}",
    )
    rate_bars(
        axes[1],
        [f"{row['vendor']}/{row['batch']}" for row in report["batches"]],
        report["batches"],
        "Batches",
    )
    if trend:
        for vendor, points in sorted(trend.items()):
            axes[2].errorbar(
                [p["audit_id"] for p in points],
                [p["estimated_error_rate"] * 100 for p in points],
                yerr=[
                    [(p["estimated_error_rate"] - p["ci_low"]) * 100 for p in points],
                    [(p["ci_high"] - p["estimated_error_rate"]) * 100 for p in points],
                ],
                marker="o",
                capsize=3,
                label=vendor,
            )
        audit_ids = sorted({p["audit_id"] for points in trend.values() for p in points})
        axes[2].set_xticks(audit_ids, [str(audit_id) for audit_id in audit_ids])
        axes[2].set_xlabel("audit")
        axes[2].set_ylabel("label error rate (%)")
        axes[2].set_title("Trend across audits")
        axes[2].grid(alpha=0.3)
        axes[2].legend(fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
