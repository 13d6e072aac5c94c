"""The self-contained HTML report of one audit: summary, top findings with thumbnails, per-class
table, and the hierarchy views where the audit has them. One file, no external assets, so it can be
mailed or archived as it is."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session

from auditor.db.models import (
    Audit,
    AuditAnalysis,
    AuditStatus,
    Dataset,
    Finding,
    FindingImage,
    Image,
)
from auditor.hierarchy.plots import plot_confusion, plot_layer_separability
from auditor.ingest.decode import UnreadableImage, decode_rgb
from auditor.ingest.sources import PathRefused, Source, SourceError, open_source
from auditor.services.diff import CHANGES, audit_diff
from auditor.services.vendors import vendor_report
from auditor.vendors import vendor_chart

THUMB_SIDE = 96
FINDINGS_PER_KIND = 12
IMAGES_PER_FINDING = 4

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1b1b1b;padding:0 1rem}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}
th{background:#f0f0f0}.num{text-align:right}.finding{display:flex;gap:1rem;align-items:flex-start;
border:1px solid #ddd;border-radius:6px;padding:.5rem;margin:.5rem 0}.finding img{image-rendering:pixelated;
border:1px solid #999}.meta{font-size:13px}.score{font-weight:600}.missing{width:96px;height:96px;
background:#eee;display:flex;align-items:center;justify-content:center;font-size:11px;color:#555}
"""


def thumbnail_data_uri(source: Source | None, path: str) -> str | None:
    if source is None:
        return None
    try:
        image = decode_rgb(source.read_bytes(path))
    except (UnreadableImage, OSError, PathRefused):
        return None
    scale = THUMB_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, PILImage.NEAREST if scale > 1 else PILImage.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def finding_html(finding: Finding, images: list[Image], source: Source | None) -> str:
    escape = html.escape
    tiles = []
    for image in images[:IMAGES_PER_FINDING]:
        uri = thumbnail_data_uri(source, image.path) if image.status == "ok" else None
        picture = (
            f'<img src="{uri}" alt="{escape(image.path)}" width="{THUMB_SIDE}">'
            if uri
            else f'<div class="missing">{escape(image.status)}</div>'
        )
        caption = escape(image.path) + member_note(finding.evidence or {}, image.id)
        tiles.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    reason = finding_reason(finding.evidence or {})
    if finding.kind == "ambiguous_classes":
        labels = " &harr; ".join(f"<b>{escape(c)}</b>" for c in finding.evidence["classes"])
    else:
        labels = f"given <b>{escape(finding.given_label or '-')}</b>"
        if finding.suggested_label:
            labels += f" &rarr; suggested <b>{escape(finding.suggested_label)}</b>"
    return (
        f'<div class="finding">{"".join(tiles)}<div class="meta">'
        f'<div class="score">score {finding.score:.2f} &middot; {escape(finding.severity)}</div>'
        f"<div>{labels}</div><div>{escape(str(reason))}</div></div></div>"
    )


def member_note(evidence: dict, image_id: int) -> str:
    """For a group of copies: the member's own label, and which member to keep; for an example
    of an ambiguous class pair: its label and the class the model gave it."""
    example = next((e for e in evidence.get("examples", []) if e.get("image_id") == image_id), None)
    if example is not None:
        label, predicted = html.escape(example["label"]), html.escape(example["predicted"])
        return f" &middot; {label}, predicted {predicted}"
    member = next((m for m in evidence.get("members", []) if m.get("image_id") == image_id), None)
    if member is None:
        return ""
    note = f" &middot; {html.escape(str(member.get('label') or '-'))}"
    if (evidence.get("keep") or {}).get("image_id") == image_id:
        note += " &middot; <b>keep</b>"
    return note


def finding_reason(evidence: dict) -> str:
    """The line a reader of the static report needs to judge a finding without the review page."""
    if evidence.get("reason") or evidence.get("problems"):
        return str(evidence.get("reason") or "; ".join(evidence["problems"]))
    if evidence.get("recommendation") and len(evidence.get("classes", [])) == 2:
        return class_pair_reason(evidence)
    typical = evidence.get("dataset_median_distance")
    if typical and "mean_neighbour_distance" in evidence:
        ratio = evidence["mean_neighbour_distance"] / typical
        return f"nearest images {ratio:.1f}x as far as is typical in this dataset"
    return ""


def class_pair_reason(evidence: dict) -> str:
    """An ambiguous class pair: what to do about it, and how far the model mixes the two up."""
    a, b = evidence["classes"]
    action = (
        "merge the classes" if evidence["recommendation"] == "merge" else "clarify the guideline"
    )
    return (
        f"{action}: the model puts {evidence['confusion_a_to_b']:.0%} of images labeled {a} in "
        f"{b}, and {evidence['confusion_b_to_a']:.0%} of {b} in {a}"
    )


def hierarchy_sections(session: Session, audit_id: int) -> list[str]:
    """The Blocks views: the hierarchy-ordered confusion heatmap and layer separability chart."""
    analyses = {
        a.name: a.payload
        for a in session.scalars(select(AuditAnalysis).where(AuditAnalysis.audit_id == audit_id))
    }
    sections = []
    if "confusion" in analyses:
        hierarchy = analyses.get("hierarchy", {})
        png = plot_confusion(analyses["confusion"], hierarchy.get("tree"))
        blocks = "; ".join(
            ", ".join(map(html.escape, block)) for block in hierarchy.get("blocks", [])
        )
        sections.append(
            "<h2>Class hierarchy</h2><p>Confusions (given label by row, predicted by column) in the "
            "order of the class tree learned from them; outlined blocks are groups of classes "
            f"the model mixes up among themselves. Blocks: {blocks or 'none'}.</p>"
            f'<img alt="hierarchy-ordered confusion matrix" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        )
    if "layers" in analyses:
        png = plot_layer_separability(analyses["layers"])
        sections.append(
            "<h2>Layer separability</h2><p>How well each layer separates the groups at each level "
            "of the tree: coarse groups separate in earlier layers than single classes.</p>"
            f'<img alt="layer separability chart" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        )
    if "comparison" in analyses and "cophenetic_correlation" in analyses["comparison"]:
        comparison = analyses["comparison"]
        sections.append(
            "<h2>Given hierarchy</h2><p>Agreement with the learned tree (cophenetic correlation): "
            f"{comparison['cophenetic_correlation']:.3f}; "
            f"{len(comparison['disagreements'])} classes placed differently.</p>"
        )
    return sections


def change_section(session: Session, audit: Audit) -> list[str]:
    """New, persisting and resolved problems against the previous audit of the dataset."""
    if audit.status != AuditStatus.COMPLETED:
        return []
    diff = audit_diff(session, audit.id, limit=0)
    if diff["previous_audit_id"] is None:
        return []
    kinds = sorted({kind for counts in diff["counts"].values() for kind in counts})
    rows = "".join(
        f"<tr><td>{html.escape(kind)}</td>"
        + "".join(f"<td class='num'>{diff['counts'][c].get(kind, 0)}</td>" for c in CHANGES)
        + "</tr>"
        for kind in kinds
    )
    carried = ", ".join(f"{n} {status}" for status, n in diff["carried_reviews"].items())
    return [
        f"<h2>Changes since audit {diff['previous_audit_id']}</h2>"
        "<table><tr><th>kind</th><th class='num'>new</th><th class='num'>persisting</th>"
        f"<th class='num'>resolved</th></tr>{rows or '<tr><td colspan=4>no findings</td></tr>'}"
        f"</table><p>Review decisions carried over from earlier audits: {carried or 'none'}.</p>"
    ]


def vendor_section(session: Session, audit_id: int) -> list[str]:
    report = vendor_report(session, audit_id)
    if not report["items"]:
        return []
    rows = "".join(
        f"<tr><td>{html.escape(row['vendor'])}</td><td class='num'>{row['images']}</td>"
        f"<td class='num'>{row['estimated_error_rate']:.1%}</td>"
        f"<td class='num'>{row['ci_low']:.1%} to {row['ci_high']:.1%}</td>"
        f"<td class='num'>{row['flagged']}</td>"
        f"<td class='num'>{'' if row['confirmed_error_rate'] is None else format(row['confirmed_error_rate'], '.1%')}"
        "</td></tr>"
        for row in report["items"]
    )
    png = base64.b64encode(vendor_chart(report)).decode()
    return [
        "<h2>Labeling vendors</h2><p>Estimated share of each vendor's labels that are wrong "
        "(95% interval), from this audit alone; confirmed: errors curators confirmed so far, "
        "over all the vendor's images.</p><table><tr><th>vendor</th><th class='num'>images</th>"
        "<th class='num'>estimated error rate</th><th class='num'>95% interval</th>"
        f"<th class='num'>flagged</th><th class='num'>confirmed</th></tr>{rows}</table>"
        f'<img alt="vendor error rates" style="max-width:100%" src="data:image/png;base64,{png}">'
    ]


def render_report(session: Session, audit_id: int) -> str:
    audit = session.get(Audit, audit_id)
    dataset = session.get(Dataset, audit.dataset_id)
    summary: dict[str, Any] = audit.summary or {}
    try:
        source: Source | None = open_source(dataset.source_uri)
    except SourceError:
        source = None
    escape = html.escape
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Audit {audit.id}: {escape(dataset.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Audit {audit.id} of <i>{escape(dataset.name)}</i></h1>",
        f"<p>Status {escape(audit.status)}; {summary.get('images', 0)} images, "
        f"{summary.get('audited_images', 0)} audited, {summary.get('unusable_images', 0)} unusable. "
        f"Health score <b>{summary.get('health_score', 0):.3f}</b> "
        f"(label health {summary.get('label_health', 0):.3f}).</p>",
        "<h2>Findings</h2><table><tr><th>kind</th><th class='num'>count</th></tr>",
    ]
    for kind, count in summary.get("findings", {}).items():
        parts.append(f"<tr><td>{escape(kind)}</td><td class='num'>{count}</td></tr>")
    parts.append("</table>")
    parts += change_section(session, audit)
    parts += vendor_section(session, audit_id)
    parts += hierarchy_sections(session, audit_id)
    parts.append(
        "<h2>Classes</h2><p>Estimated noise: the share of the class's labels flagged as "
        "mislabeled; labeled so, but probably: where those labels belong, by the model's "
        "confident counts (cleanlab's confident joint).</p>"
        "<table><tr><th>class</th><th class='num'>images</th>"
        "<th class='num'>estimated noise</th><th>labeled so, but probably</th></tr>"
    )
    for row in summary.get("classes", []):
        confusions = ", ".join(
            f"{escape(c['class'])} ({c['share']:.0%})" for c in row.get("top_confusions", [])
        )
        parts.append(
            f"<tr><td>{escape(row['class'])}</td><td class='num'>{row['images']}</td>"
            f"<td class='num'>{row['estimated_noise_rate']:.1%}</td><td>{confusions}</td></tr>"
        )
    parts.append("</table><h2>Top findings</h2>")
    for kind in summary.get("findings", {}):
        findings = session.scalars(
            select(Finding)
            .where(Finding.audit_id == audit_id, Finding.kind == kind)
            .order_by(Finding.score.desc(), Finding.id)
            .limit(FINDINGS_PER_KIND)
        ).all()
        if not findings:
            continue
        parts.append(f"<h3>{escape(kind)}</h3>")
        for finding in findings:
            images = session.scalars(
                select(Image)
                .join(FindingImage, FindingImage.image_id == Image.id)
                .where(FindingImage.finding_id == finding.id)
                .order_by(FindingImage.position)
            ).all()
            parts.append(finding_html(finding, list(images), source))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(session: Session, audit_id: int, data_dir: Path) -> Path:
    target = Path(data_dir) / "reports" / f"audit-{audit_id}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(session, audit_id), encoding="utf-8")
    return target
