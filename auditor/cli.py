"""The `auditor` command line (DESIGN §5): typer for arguments, rich for progress and tables.

Commands import the pipeline (torch, cleanlab, scikit-learn) only when they run it, so `auditor
--help` answers at once, and so does every decoding worker process: multiprocessing's spawn
re-imports the main script, and through it this module, in each one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NamedTuple

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy import select

from auditor.config import Settings, get_settings
from auditor.db import migrate
from auditor.db.models import Audit, Dataset, Schedule
from auditor.db.queries import found_paths_by_kind
from auditor.db.session import make_engine, make_session_factory
from auditor.ingest.sources import Delivery, SourceError
from auditor.pipeline.scheduler import ScheduleError, remove_schedule, set_schedule

if TYPE_CHECKING:
    from auditor.demo import PlantedProblems
    from auditor.ingest.ingest import IngestResult

app = typer.Typer(help="Audit image-classification datasets for label errors and duplicates.")
db_app = typer.Typer(help="Database schema.")
dataset_app = typer.Typer(help="Register and refresh datasets.")
app.add_typer(db_app, name="db")
app.add_typer(dataset_app, name="dataset")
schedule_app = typer.Typer(help="Periodic audits.")
app.add_typer(schedule_app, name="schedule")

console = Console(stderr=True)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def session_factory(settings: Settings):
    engine = make_engine(settings.database_url)
    try:
        migrate.ensure_schema(engine)
    except RuntimeError as exc:
        fail(str(exc))
    return make_session_factory(engine)


class RateColumn(ProgressColumn):
    """Images per second, the figure a user watches to judge throughput."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "", style="cyan")


class StageLines:
    """Progress for a log file or a pipe, where a live bar would print nothing until the end: a
    line when the stage changes or another tenth of it is done, with the seconds since the start,
    so an audit run under nohup or in CI shows where it is."""

    def __init__(self, out: Console):
        self.out = out
        self.start = time.monotonic()
        self.description = ""
        self.total: float | None = None
        self.shown: tuple[str, int] | None = None

    def __enter__(self) -> StageLines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        self.description, self.total = description, total
        return 0

    def update(
        self,
        task: int,
        *,
        description: str | None = None,
        completed: float = 0.0,
        total: float | None = None,
    ) -> None:
        self.description = description or self.description
        self.total = total or self.total
        tenth = int(10 * completed / self.total) if self.total else 0
        if (self.description, tenth) == self.shown:
            return
        self.shown = (self.description, tenth)
        done = f"{completed:,.0f}/{self.total:,.0f}" if self.total and self.total > 1 else ""
        share = f"{10 * tenth}%" if self.total else ""
        line = " ".join(part for part in (self.description, done, share) if part)
        self.out.print(f"{time.monotonic() - self.start:7.1f} s  {line}", highlight=False)


def progress_bar() -> Progress | StageLines:
    """A live bar on a terminal, plain lines elsewhere; on stderr either way, so `--json` output
    on stdout stays one clean object while a log still shows where a long audit is."""
    if not console.is_terminal:
        return StageLines(console)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


class SourceFiles(NamedTuple):
    """The optional files that travel with a source."""

    labels: Path | None = None
    classes: Path | None = None
    hierarchy: Path | None = None


LabelsOption = Annotated[Path | None, typer.Option(help="CSV/JSONL of path,label to apply")]
ClassesOption = Annotated[Path | None, typer.Option(help="Class list, one name per line")]
HierarchyOption = Annotated[
    Path | None, typer.Option(help="Class tree: JSON {name, children} or class,parent CSV")
]


def run_ingest(name: str, source: Path, files: SourceFiles) -> IngestResult:
    from auditor.ingest.ingest import ingest

    settings = get_settings()
    factory = session_factory(settings)
    with progress_bar() as progress:
        task = progress.add_task("decoding", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            return ingest(
                factory,
                name,
                source,
                settings,
                files.labels,
                files.classes,
                progress=report,
                hierarchy_file=files.hierarchy,
            )
        except SourceError as exc:
            fail(str(exc))
            raise


def print_findings_table(title: str, findings: dict[str, int]) -> None:
    table = Table(title=title)
    table.add_column("finding kind")
    table.add_column("count", justify="right")
    for kind, count in sorted(findings.items()):
        table.add_row(kind, str(count))
    if not findings:
        table.add_row("(none)", "0")
    console.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the configured database to the newest schema."""
    settings = get_settings()
    migrate.upgrade(settings.database_url)
    console.print(f"database at revision {migrate.head_revision()}")


@dataset_app.command("add")
def dataset_add(
    name: str,
    source: Annotated[Path, typer.Argument(help="Folder, .csv/.jsonl manifest, or .zip/.tar")],
    labels: LabelsOption = None,
    classes: ClassesOption = None,
    hierarchy: HierarchyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Register a dataset (or refresh it: only new or changed files are decoded)."""
    result = run_ingest(name, source, SourceFiles(labels, classes, hierarchy))
    if as_json:
        print(
            json.dumps(
                {
                    "dataset_id": result.dataset_id,
                    "images": result.images,
                    "findings": result.findings,
                }
            )
        )
        return
    console.print(
        f"dataset [bold]{name}[/] (id {result.dataset_id}): {result.images} images, "
        f"{result.decoded} decoded, {result.skipped_unchanged} unchanged"
        + (
            f", {result.duplicate_rows} repeated manifest rows folded"
            if result.duplicate_rows
            else ""
        )
    )
    print_findings_table("ingest findings", result.findings)


@dataset_app.command("deliver")
def dataset_deliver(
    name: str,
    manifest: Annotated[
        Path, typer.Argument(help="CSV/JSONL of path,label[,split][,vendor][,batch]")
    ],
    vendor: Annotated[str | None, typer.Option(help="Vendor of rows without one")] = None,
    batch: Annotated[str | None, typer.Option(help="Batch of rows without one")] = None,
    audit: Annotated[bool, typer.Option(help="Audit the dataset afterwards, here")] = False,
    backbone: Annotated[str, typer.Option(help="Backbone of that audit")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Ingest a vendor's delivery into dataset NAME: new images (paths under the dataset's source)
    and/or new labels for registered ones. Only the images it names are decoded."""
    from auditor.ingest.ingest import ingest
    from auditor.report import write_report

    settings = get_settings()
    factory = session_factory(settings)
    with factory() as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == name))
        if dataset is None:
            fail(f"no dataset named {name!r}; register it with `auditor dataset add`")
        source = dataset.source_uri
    try:
        result = ingest(factory, name, source, settings, delivery=Delivery(manifest, vendor, batch))
    except SourceError as exc:
        fail(str(exc))
        raise
    output = {"dataset_id": result.dataset_id, "images": result.images, "decoded": result.decoded}
    output["findings"] = result.findings
    if audit:
        audited = run_audit_here(factory, settings, result.dataset_id, {"backbone": backbone})
        with factory() as session:
            output["report"] = str(write_report(session, audited.id, settings.data_dir))
        output["audit_id"] = audited.id
        output["audit_findings"] = audited.summary.get("findings", {})
    if as_json:
        print(json.dumps(output))
        return
    console.print(
        f"delivery into [bold]{name}[/]: {result.images} images in the dataset, "
        f"{result.decoded} decoded"
    )
    print_findings_table("ingest findings", result.findings)
    if audit:
        print_audit_summary(audited)
        console.print(f"report: {output['report']}")


def run_audit_here(factory, settings: Settings, dataset_id: int, parameters: dict):
    from auditor.pipeline.audit import create_audit, run_audit

    audit_id = create_audit(factory, dataset_id, parameters)
    with progress_bar() as progress:
        task = progress.add_task("audit", total=1.0)

        def report(stage: str, fraction: float) -> None:
            progress.update(task, description=stage, completed=fraction)

        try:
            return run_audit(factory, settings, audit_id, on_stage=report)
        except Exception as exc:
            fail(f"audit {audit_id} failed: {exc}")
            raise


def run_full_audit(
    name: str,
    source: Path,
    files: SourceFiles,
    parameters: dict,
) -> tuple[IngestResult, Audit, Path]:
    """Ingest (incrementally), audit in this process, write the report."""
    from auditor.report import write_report

    settings = get_settings()
    ingested = run_ingest(name, source, files)
    factory = session_factory(settings)
    audit = run_audit_here(factory, settings, ingested.dataset_id, parameters)
    with factory() as session:
        report_path = write_report(session, audit.id, settings.data_dir)
    return ingested, audit, report_path


def audit_parameters(backbone: str, epochs: int | None) -> dict:
    parameters: dict = {"backbone": backbone}
    if epochs is not None:
        parameters["epochs"] = epochs
    return parameters


def print_audit_summary(audit: Audit) -> None:
    summary = audit.summary
    console.print(
        f"audit {audit.id}: {summary.get('audited_images', 0)} images audited, "
        f"health score {summary.get('health_score', 0):.3f}; stage seconds "
        + ", ".join(f"{k} {v:.1f}" for k, v in audit.stage_timings.items())
    )
    print_findings_table("findings", summary.get("findings", {}))


BackboneOption = Annotated[
    str,
    typer.Option(
        help="auto (pretrained ResNet-18 from the local torch cache, else a CNN trained on the "
        "data), trained, or a backbone name"
    ),
]
EpochsOption = Annotated[int | None, typer.Option(help="Ceiling on CNN training epochs")]


@app.command()
def run(
    source: Annotated[Path, typer.Argument(help="Folder, .csv/.jsonl manifest, or .zip/.tar")],
    labels: LabelsOption = None,
    classes: ClassesOption = None,
    hierarchy: HierarchyOption = None,
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the source's)")] = None,
    backbone: BackboneOption = "auto",
    epochs: EpochsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object last")] = False,
) -> None:
    """One-shot audit of a folder, manifest or archive on the configured database."""
    dataset_name = name or source.resolve().name
    ingested, audit, report_path = run_full_audit(
        dataset_name,
        source,
        SourceFiles(labels, classes, hierarchy),
        audit_parameters(backbone, epochs),
    )
    if as_json:
        print(
            json.dumps(
                {
                    "dataset_id": ingested.dataset_id,
                    "audit_id": audit.id,
                    "images": ingested.images,
                    "findings": audit.summary.get("findings", {}),
                    "report": str(report_path),
                }
            )
        )
        return
    print_audit_summary(audit)
    console.print(f"report: {report_path}")


@app.command()
def demo(
    per_class: Annotated[int, typer.Option(help="Images per digit class")] = 100,
    backbone: BackboneOption = "auto",
    epochs: EpochsOption = None,
) -> None:
    """Build the demo dataset (digits with planted problems), audit it, compare with the truth."""
    from auditor.demo import build_demo_dataset

    settings = get_settings()
    root = settings.data_dir / "demo" / "digits"
    planted = build_demo_dataset(root, per_class=per_class)
    console.print(f"demo dataset written to {root}")
    ingested, audit, report_path = run_full_audit(
        "demo", root, SourceFiles(), audit_parameters(backbone, epochs)
    )
    print_audit_summary(audit)
    factory = session_factory(settings)
    with factory() as session:
        found = found_paths_by_kind(session, ingested.dataset_id, audit.id)
    print_planted_comparison(planted, found)
    console.print(f"report: {report_path}")


def print_planted_comparison(planted: PlantedProblems, found: dict[str, list[list[str]]]) -> None:
    table = Table(title="planted problems found")
    for column in ("problem", "planted", "found", "flagged in all"):
        table.add_column(column, justify="left" if column == "problem" else "right")
    planted_dupes = {frozenset(group) for group in planted.exact_duplicates}
    found_dupes = {frozenset(group) for group in found.get("exact_duplicate", [])}
    table.add_row(
        "exact duplicates",
        str(len(planted_dupes)),
        str(len(planted_dupes & found_dupes)),
        str(len(found_dupes)),
    )
    found_unreadable = {p for group in found.get("unreadable", []) for p in group}
    table.add_row(
        "unreadable files",
        str(len(planted.unreadable)),
        str(len(set(planted.unreadable) & found_unreadable)),
        str(len(found_unreadable)),
    )
    flagged = {p for group in found.get("mislabel", []) for p in group}
    table.add_row(
        "mislabeled images",
        str(len(planted.mislabeled)),
        str(len(set(planted.mislabeled) & flagged)),
        str(len(flagged)),
    )
    console.print(table)


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="Exit when the queue is empty")] = False,
    worker_id: Annotated[
        str | None, typer.Option("--id", help="Worker name in the audit rows")
    ] = None,
) -> None:
    """Claim queued audits from the database and run them until stopped (SIGTERM finishes the
    current batch and hands the audit back)."""
    from auditor.pipeline.worker import Worker

    settings = get_settings()
    factory = session_factory(settings)
    runner = Worker(factory, settings, worker_id)
    runner.install_signal_handlers()
    console.print(f"worker {runner.worker_id} polling {settings.database_url}")
    done = runner.run_forever(exit_when_idle=once)
    console.print(f"worker {runner.worker_id} stopped after {done} audit(s)")


@schedule_app.command("set")
def schedule_set(
    dataset_id: int,
    cron: Annotated[str | None, typer.Option(help="Cron expression, e.g. '0 3 * * 1'")] = None,
    every: Annotated[int | None, typer.Option(help="Interval in seconds (at least 60)")] = None,
) -> None:
    """Audit a dataset periodically; workers enqueue at most one pending audit per dataset."""
    try:
        schedule = set_schedule(
            session_factory(get_settings()), dataset_id, cron=cron, interval_seconds=every
        )
    except ScheduleError as exc:
        fail(str(exc))
        raise
    console.print(f"dataset {dataset_id}: next audit at {schedule.next_run_at:%Y-%m-%d %H:%M} UTC")


@schedule_app.command("remove")
def schedule_remove(dataset_id: int) -> None:
    """Stop auditing a dataset periodically."""
    if not remove_schedule(session_factory(get_settings()), dataset_id):
        fail(f"dataset {dataset_id} has no schedule")
    console.print(f"dataset {dataset_id}: schedule removed")


@schedule_app.command("list")
def schedule_list() -> None:
    """Every schedule with its next run."""
    factory = session_factory(get_settings())
    table = Table(title="schedules")
    for column in ("dataset", "cron", "every (s)", "next run (UTC)", "last enqueued"):
        table.add_column(column)
    with factory() as session:
        for row in session.scalars(select(Schedule).order_by(Schedule.dataset_id)):
            table.add_row(
                str(row.dataset_id),
                row.cron or "",
                str(row.interval_seconds or ""),
                f"{row.next_run_at:%Y-%m-%d %H:%M}",
                f"{row.last_enqueued_at:%Y-%m-%d %H:%M}" if row.last_enqueued_at else "",
            )
    console.print(table)


apikey_app = typer.Typer(help="API keys for the REST API.")
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("create")
def apikey_create(
    scope: Annotated[str, typer.Option(help="read, review or admin")],
    dataset: Annotated[int | None, typer.Option(help="Limit the key to this dataset")] = None,
    vendor: Annotated[
        str | None, typer.Option(help="Limit the key to one vendor's images (needs --dataset)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A note on whose key this is")] = None,
) -> None:
    """Create an API key; it is shown once, on the last line."""
    from auditor.auth import create_api_key

    if scope not in ("read", "review", "admin"):
        fail("--scope must be read, review or admin")
    factory = session_factory(get_settings())
    try:
        with factory() as session, session.begin():
            key, token = create_api_key(session, scope, dataset, vendor, name)
            key_id = key.id
    except (LookupError, ValueError) as exc:
        fail(str(exc))
        raise
    console.print(f"API key {key_id} ({scope}); store it now, it is not shown again:")
    print(token)


@app.command()
def export(
    audit_id: int,
    format: Annotated[
        str, typer.Option("--format", help="csv, json, labelstudio, manifest or fiftyone")
    ] = "csv",
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write")] = Path(
        "export.csv"
    ),
) -> None:
    """Write an audit's findings (or a corrected manifest) to a file."""
    from auditor.export import export_audit
    from auditor.services import ServiceError

    factory = session_factory(get_settings())
    try:
        with factory() as session:
            result = export_audit(session, audit_id, format)
    except (ServiceError, LookupError) as exc:
        fail(str(exc))
        raise
    output.write_bytes(result.content)
    console.print(f"wrote {output}")


@app.command()
def vendors(
    audit_id: int,
    format: Annotated[str, typer.Option("--format", help="table, csv, json or png")] = "table",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write")] = None,
) -> None:
    """Estimated label error rate per vendor (95% interval) beside the rates confirmed by
    reviews; per batch and per class in the csv and json forms."""
    from auditor.services import ServiceError
    from auditor.services.vendors import vendor_report
    from auditor.vendors import method_line, vendor_chart, vendor_csv, vendor_json

    if format not in ("table", "csv", "json", "png"):
        fail("--format must be table, csv, json or png")
    factory = session_factory(get_settings())
    try:
        with factory() as session:
            report = vendor_report(session, audit_id)
    except ServiceError as exc:
        fail(str(exc))
        raise
    if format == "table":
        table = Table(title=f"vendors, audit {audit_id}")
        for column in ("vendor", "images", "estimated", "95% interval", "confirmed"):
            table.add_column(column, justify="left" if column == "vendor" else "right")
        for row in report["items"]:
            confirmed = row["confirmed_error_rate"]
            table.add_row(
                row["vendor"],
                str(row["images"]),
                f"{row['estimated_error_rate']:.1%}",
                f"{row['ci_low']:.1%} to {row['ci_high']:.1%}",
                "" if confirmed is None else f"{confirmed:.1%}",
            )
        console.print(table)
        console.print(method_line(report), style="dim")
        if report["caution"]:
            console.print(report["caution"], style="yellow")
        return
    content = {
        "csv": lambda: vendor_csv(report).encode(),
        "json": lambda: vendor_json(report).encode(),
        "png": lambda: vendor_chart(report),
    }[format]()
    target = output or Path(f"audit-{audit_id}-vendors.{format}")
    target.write_bytes(content)
    console.print(f"wrote {target}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface; non-loopback needs AUDITOR_AUTH=1")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="No in-process worker")] = False,
) -> None:
    """The REST API (and, unless --no-worker, an in-process audit worker)."""
    import uvicorn

    from api.app import bind_host, create_app
    from api.worker_thread import start_worker_thread

    settings = get_settings()
    try:
        host = bind_host(settings, host)
    except ValueError as exc:
        fail(str(exc))
    factory = session_factory(settings)
    worker_ = None if no_worker else start_worker_thread(factory, settings)
    try:
        # Keep idle connections longer than clients' pools do (httpx: 5 s), so the server never
        # closes one just as a client reuses it (bench/api.py).
        uvicorn.run(
            create_app(settings, factory, dispatch_webhooks=True),
            host=host,
            port=port,
            timeout_keep_alive=75,
        )
    finally:
        if worker_ is not None:
            worker_.stopping.set()
