"""The review page end to end: headless Chromium (Playwright, the system's /usr/bin/chromium)
against uvicorn serving `create_app` on a seeded SQLite file. Each page writes a screenshot to
docs/screenshots/ for docs/REVIEW_PAGE.md."""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from auditor.auth import create_api_key
from auditor.checks.base import FindingDraft
from auditor.db import migrate
from auditor.db.findings import save_findings
from auditor.db.models import Audit, AuditStatus, Class, Finding, Label, Review
from auditor.db.session import make_engine, make_session_factory
from tests.test_api import Seeded, seed
from tests.ui_server import add_structure, serve

CHROMIUM = os.environ.get("AUDITOR_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser tests need {reason}")
    pytest.skip(reason)


try:
    from playwright import sync_api
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)
expect = sync_api.expect


@dataclass
class Site:
    url: str
    seeded: Seeded


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    tmp_path = tmp_path_factory.mktemp("ui")
    url = f"sqlite:///{tmp_path / 'auditor.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    seeded = seed(make_session_factory(engine), tmp_path)
    add_structure(seeded)
    with serve(create_app(seeded.settings, seeded.factory)) as base:
        yield Site(base, seeded)
    engine.dispose()


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
        unavailable(f"Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert errors == [], errors


def images_loaded(page, timeout: float = 10.0) -> None:
    """Wait until every <img> shows a decoded picture (polling from Python: the page's CSP
    forbids the string evaluation Playwright's wait_for_function uses)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate("() => [...document.images].every((i) => i.naturalWidth > 0)"):
        assert time.monotonic() < deadline, "images did not load"
        time.sleep(0.1)


def shot(page, name: str) -> None:
    images_loaded(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def finding_row(site: Site, finding_id: int) -> Finding:
    with site.seeded.factory() as session:
        return session.get(Finding, finding_id)


def shown_finding(page) -> int:
    heading = page.locator(".detail h2").inner_text()
    return int(re.search(r"#(\d+)", heading).group(1))


def test_datasets_page_polls_running_audits(site, page):
    page.goto(site.url)
    expect(page.get_by_role("heading", name="digits")).to_be_visible()
    with site.seeded.factory() as session:
        running = session.scalar(select(Audit).where(Audit.status == AuditStatus.RUNNING))
    row = page.locator(f"tr[data-audit='{running.id}']")
    expect(row).to_contain_text("40 %")
    shot(page, "datasets")
    with site.seeded.factory() as session, session.begin():
        session.get(Audit, running.id).progress = 0.75
    expect(row).to_contain_text("75 %", timeout=6000)


def test_review_findings_with_the_keyboard(site, page):
    page.goto(f"{site.url}/#/audits/{site.seeded.audit_id}/findings?kind=mislabel")
    expect(page.locator(".detail h2")).to_contain_text("mislabel")
    shot(page, "findings")

    first = shown_finding(page)
    page.keyboard.press("c")
    expect(page.locator("#toast")).to_contain_text(f"Confirmed finding #{first}")
    row = finding_row(site, first)
    assert (row.status, row.version) == ("confirmed", 2)

    second = shown_finding(page)
    assert second != first
    page.keyboard.press("r")
    picker = page.get_by_label("New label")
    expect(picker).to_be_focused()
    picker.select_option("seven")
    shot(page, "findings-relabel")
    picker.press("Enter")
    expect(page.locator("#toast")).to_contain_text(f"Relabeled finding #{second}")
    assert finding_row(site, second).status == "relabeled"
    with site.seeded.factory() as session:
        image_id = session.get(Finding, second).members[0].image_id
        label = session.scalar(
            select(Class.name)
            .join(Label, Label.class_id == Class.id)
            .where(Label.image_id == image_id, Label.source == "review", Label.is_current)
        )
    assert label == "seven"

    # Someone else decides the shown finding first: the page must refuse to overwrite it.
    third = shown_finding(page)
    httpx.post(
        f"{site.url}/api/v1/findings/{third}/review",
        json={"action": "dismiss", "version": 1, "reviewer": "bob"},
    ).raise_for_status()
    page.keyboard.press("c")
    expect(page.locator(".detail [role=alert]")).to_contain_text("changed by bob")
    assert finding_row(site, third).status == "dismissed"
    page.keyboard.press("k")
    assert shown_finding(page) == second


def test_outlier_shows_how_far_its_nearest_images_are(site, page):
    """An outlier's evidence as the check writes it: the page states the distance relative to the
    dataset's typical one and shows the nearest images, with no suggestion to compare against."""
    ids = list(site.seeded.image_ids.values())
    with site.seeded.factory() as session, session.begin():
        audit = Audit(dataset_id=site.seeded.dataset_id, status=AuditStatus.COMPLETED, stage="done")
        session.add(audit)
        session.flush()
        neighbours = [
            {"image_id": ids[i], "path": path, "label": "three", "distance": distance}
            for i, (path, distance) in enumerate([("a.png", 600.0), ("b.png", 750.0)], start=1)
        ]
        evidence = {
            "measured_on": "thumbnails of colour and edges",
            "mean_neighbour_distance": 800.0,
            "dataset_median_distance": 400.0,
            "robust_z": 6.1,
            "neighbours": neighbours,
        }
        draft = FindingDraft(
            kind="outlier",
            subject=str(ids[0]),
            image_ids=[ids[0]],
            score=0.9,
            given_label="three",
            evidence=evidence,
        )
        save_findings(session, site.seeded.dataset_id, audit.id, [draft], ["outlier"])
        audit_id = audit.id
    page.goto(f"{site.url}/#/audits/{audit_id}/findings?kind=outlier")
    expect(page.locator(".facts")).to_contain_text("2.0× as far as is typical in this dataset")
    gallery = page.locator(".detail .gallery li")
    expect(gallery).to_have_count(2)
    expect(gallery.nth(0)).to_contain_text("three · 1.5×")
    expect(gallery.nth(1)).to_contain_text("three · 1.9×")
    expect(page.locator(".detail .legend")).not_to_contain_text("suggestion")
    shot(page, "findings-outlier")


def test_ambiguous_class_pair_reads_as_a_pair_not_a_relabel(site, page):
    """An ambiguous class pair concerns two classes: the page names both, the recommendation and
    how far the model mixes them up, and offers no relabeling of its example images."""
    ids = list(site.seeded.image_ids.values())
    with site.seeded.factory() as session, session.begin():
        audit = Audit(dataset_id=site.seeded.dataset_id, status=AuditStatus.COMPLETED, stage="done")
        session.add(audit)
        session.flush()
        draft = FindingDraft(
            kind="ambiguous_classes",
            subject="automobile|truck",
            image_ids=ids[:2],
            score=0.5,
            given_label="automobile",
            suggested_label="truck",
            evidence={
                "classes": ["automobile", "truck"],
                "confusion_a_to_b": 0.236,
                "confusion_b_to_a": 0.263,
                "recommendation": "clarify",
                "examples": [
                    {"image_id": ids[0], "label": "automobile", "predicted": "truck"},
                    {"image_id": ids[1], "label": "truck", "predicted": "automobile"},
                ],
            },
        )
        save_findings(session, site.seeded.dataset_id, audit.id, [draft], ["ambiguous_classes"])
        audit_id = audit.id
    page.goto(f"{site.url}/#/audits/{audit_id}/findings?kind=ambiguous_classes")
    expect(page.locator(".queue-item .labels")).to_have_text("automobile ↔ truck")
    facts = page.locator(".facts")
    expect(facts).to_contain_text("automobile ↔ truck")
    expect(facts).to_contain_text("Clarify the guideline")
    expect(facts).to_contain_text("Labeled truck, predicted automobile")
    expect(facts).to_contain_text("26.3 %")
    expect(facts).not_to_contain_text("Suggested label")
    captions = page.locator(".finding-images figcaption")
    expect(captions.nth(0)).to_contain_text("automobile, predicted truck")
    expect(captions.nth(1)).to_contain_text("truck, predicted automobile")
    expect(page.get_by_role("button", name=re.compile("Relabel"))).to_have_count(0)
    page.keyboard.press("r")
    expect(page.locator("form.relabel")).to_have_count(0)


def test_duplicate_group_keeps_the_chosen_member(site, page):
    page.goto(f"{site.url}/#/audits/{site.seeded.audit_id}/duplicates")
    group = page.locator("article.group").first
    expect(group.get_by_label("Keep (suggested)")).to_be_checked()
    shot(page, "duplicates")
    group.get_by_label("Keep this one").check()
    group.get_by_role("button", name=re.compile("Confirm duplicates")).click()
    expect(group.locator(".status")).to_have_text("confirmed")
    with site.seeded.factory() as session:
        finding = session.scalar(select(Finding).where(Finding.kind == "near_duplicate"))
        comment = session.scalar(select(Review.comment).where(Review.finding_id == finding.id))
        unsuggested = finding.members[0].image_id
    assert comment.startswith("keep: ") and f"(image {unsuggested})" in comment


def test_a_group_whose_labels_disagree_shows_the_vote_and_the_suggestion(site, page):
    with site.seeded.factory() as session, session.begin():
        finding = session.scalar(select(Finding).where(Finding.kind == "near_duplicate"))
        finding.evidence = {
            **finding.evidence,
            "label_counts": {"one": 1, "seven": 1},
            "model_probability": {"seven": 0.07, "one": 0.81},
        }
        finding.suggested_label = "one"
    page.goto(f"{site.url}/#/audits/{site.seeded.audit_id}/duplicates?status=")
    note = page.locator("article.group .group-labels")
    expect(note).to_have_text(
        "Labels disagree (one ×1, seven ×1). Suggested label: one. "
        "The model's probability: one 0.81, seven 0.07."
    )


def test_blocks_cells_and_collapsing(site, page):
    page.goto(f"{site.url}/#/audits/{site.seeded.audit_id}/blocks")
    cells = page.locator("rect.cell")
    expect(cells).to_have_count(100)
    expect(page.locator(".heatmap .blocks rect").first).to_be_attached()

    # An off-diagonal cell with images: the sample viewer shows exactly those images.
    with httpx.Client(base_url=f"{site.url}/api/v1") as api:
        confusion = api.get(f"/audits/{site.seeded.audit_id}/confusion").json()
    order, matrix = confusion["order"], confusion["matrix"]
    given, predicted = next(
        (i, j) for i in range(len(order)) for j in range(len(order)) if i != j and matrix[i][j]
    )
    page.locator(f"rect.cell[data-row='{given}'][data-col='{predicted}']").click()
    samples = page.locator(".samples")
    expect(samples.locator("h2")).to_have_text(
        f"Labeled {order[given]}, predicted {order[predicted]}"
    )
    expect(samples.locator("img")).to_have_count(matrix[given][predicted])
    shot(page, "blocks-cell")

    # Collapse the smallest group node: its k classes become one row and one column.
    marks = page.locator("g.node[aria-expanded='true']")
    sizes = [
        int(re.search(r"group of (\d+)", marks.nth(i).get_attribute("aria-label")).group(1))
        for i in range(marks.count())
    ]
    smallest = min(range(len(sizes)), key=sizes.__getitem__)
    group = marks.nth(smallest)
    group.focus()
    page.keyboard.press("Enter")
    n = len(order) - sizes[smallest] + 1
    expect(cells).to_have_count(n * n)
    collapsed_row = page.locator(".row-label.group")
    expect(collapsed_row).to_have_count(1)
    row = int(page.locator("rect.cell[data-given*=',']").first.get_attribute("data-row"))
    page.locator(f"rect.cell[data-row='{row}'][data-col='{row}']").click()
    expect(samples.locator(".sample-group")).to_have_count(sizes[smallest])
    shot(page, "blocks-collapsed")
    page.get_by_role("button", name="Expand all").click()
    expect(cells).to_have_count(100)


def test_tables_and_layer_chart(site, page):
    page.goto(f"{site.url}/#/audits/{site.seeded.audit_id}/tables")
    expect(page.locator("#vendors-title + svg circle.estimate")).to_have_count(2)
    expect(page.get_by_role("row", name=re.compile("^acme"))).to_be_visible()
    expect(page.get_by_role("note")).to_contain_text("Weak estimates: the models that judged")
    expect(page.locator("#classes-title ~ table tbody tr")).to_have_count(10)
    expect(page.locator("polyline.series").first).to_be_attached()
    shot(page, "tables")


def test_api_key_is_asked_once_and_sent(site, browser):
    settings = site.seeded.settings.model_copy(update={"auth": True})
    with site.seeded.factory() as session, session.begin():
        _, token = create_api_key(session, "review")
    with serve(create_app(settings, site.seeded.factory)) as url:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        page = context.new_page()
        page.goto(f"{url}/#/audits/{site.seeded.audit_id}/findings")
        dialog = page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        shot(page, "api-key")
        page.get_by_label("Key", exact=True).fill(token)
        page.keyboard.press("Enter")
        expect(page.locator(".detail h2")).to_be_visible()
        expect(page.locator(".finding-images img")).to_have_count(1)
        images_loaded(page)
        assert page.locator(".finding-images img").get_attribute("src").startswith("blob:")
        page.goto(f"{url}/#/datasets")
        expect(page.get_by_role("heading", name="digits")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('auditor.apiKey')") == token
        context.close()
