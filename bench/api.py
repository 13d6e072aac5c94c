"""API benchmark: findings-page latency and throughput over 1,000,000 findings on PostgreSQL,
and the check endpoint's latency on CPU.

    .venv/bin/python bench/api.py [--findings 1000000] [--clients 50] [--requests 2000]

Creates a schema of its own on AUDITOR_TEST_POSTGRES_URL, migrates it, bulk-loads findings with
COPY, starts uvicorn on 127.0.0.1 in a subprocess, drives it with httpx.AsyncClient (bounded
request count and time), writes bench/results/api.md and drops the schema.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import text

from auditor.db import migrate
from auditor.db.models import Audit, AuditStatus, Dataset, Image, utcnow
from auditor.db.session import make_engine, make_session_factory

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get(
    "AUDITOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
KINDS = ["mislabel", "near_duplicate", "outlier", "exact_duplicate", "image_quality"]


def load_findings(url: str, n_findings: int, data_dir: Path) -> tuple[int, int]:
    """A dataset of 10,000 images and one completed audit holding `n_findings` findings."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        dataset = Dataset(name="bench", source_uri=str(data_dir), source_kind="folder")
        session.add(dataset)
        session.flush()
        session.add_all(
            Image(dataset_id=dataset.id, path=f"c{i % 10}/img{i}.png", sha256=f"{i:064x}")
            for i in range(10_000)
        )
        audit = Audit(dataset_id=dataset.id, status=AuditStatus.COMPLETED, finished_at=utcnow())
        session.add(audit)
        session.flush()
        dataset_id, audit_id = dataset.id, audit.id
        first_image = session.scalar(text("select min(id) from images"))
    rng = np.random.default_rng(0)
    scores = rng.random(n_findings)
    now = utcnow().isoformat()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = (
            "id, dataset_id, audit_id, key, kind, score, is_issue, severity, given_label, "
            "suggested_label, evidence, status, version, created_at, updated_at"
        )
        with cursor.copy(f"COPY findings ({columns}) FROM STDIN") as copy:
            for i in range(n_findings):
                copy.write_row(
                    (
                        i + 1,
                        dataset_id,
                        audit_id,
                        f"audit{audit_id}:{KINDS[i % 5]}:{i}",
                        KINDS[i % 5],
                        float(scores[i]),
                        True,
                        "medium",
                        f"c{i % 10}",
                        f"c{(i + 1) % 10}",
                        '{"given_probability": 0.1}',
                        "open",
                        1,
                        now,
                        now,
                    )
                )
        with cursor.copy("COPY finding_images (finding_id, image_id, position) FROM STDIN") as copy:
            for i in range(n_findings):
                copy.write_row((i + 1, first_image + i % 10_000, 0))
        cursor.execute("select setval('findings_id_seq', %s)", (n_findings,))
        cursor.execute("ANALYZE findings; ANALYZE finding_images")
        raw.commit()
    finally:
        raw.close()
    engine.dispose()
    return dataset_id, audit_id


async def drive(base: str, paths: list[str], clients: int, requests: int, seconds: float):
    """`clients` concurrent loops, each following next_cursor, until `requests` or `seconds`."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    budget = iter(range(requests))

    async def one_client(number: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        cursor = None
        path = paths[number % len(paths)]
        while time.monotonic() < deadline and next(budget, None) is not None:
            params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
            started = time.perf_counter()
            try:
                response = await client.get(path, params=params)
            except httpx.HTTPError:  # a dropped connection counts as an error, not a crash
                errors += 1
                cursor = None
                continue
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors += 1
                continue
            cursor = response.json()["next_cursor"]

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(i, client) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--findings", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()

    schema = f"auditor_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    server = None
    try:
        migrate.upgrade(url)
        data_dir = Path(tempfile.mkdtemp(prefix="auditor-bench-"))
        started = time.perf_counter()
        dataset_id, audit_id = load_findings(url, args.findings, data_dir)
        load_seconds = time.perf_counter() - started
        env = {**os.environ, "AUDITOR_DATABASE_URL": url, "AUDITOR_DATA_DIR": str(data_dir)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "bench.api:app_from_env",
                "--host",
                "127.0.0.1",
                "--port",
                str(args.port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(120):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        findings = f"/api/v1/audits/{audit_id}/findings"
        asyncio.run(drive(base, [findings], 4, 40, 30))  # warm-up
        runs = {
            "all kinds, walking pages": [findings],
            "kind filter, walking pages": [f"{findings}?kind=mislabel"],
        }
        results = {}
        for name, paths in runs.items():
            latencies, errors, elapsed = asyncio.run(
                drive(base, paths, args.clients, args.requests, args.seconds)
            )
            results[name] = (latencies, errors, elapsed)
        check_latencies = check_benchmark(base, dataset_id)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    write_report(args, load_seconds, results, check_latencies)


def check_benchmark(base: str, dataset_id: int) -> list[float]:
    """The check endpoint with an upload, sequentially (SHA-256 + pHash over 10,000 images)."""
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="PNG")
    latencies = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for _ in range(20):
            started = time.perf_counter()
            response = client.post(
                f"/api/v1/datasets/{dataset_id}/check",
                data={"label": "c1"},
                files={"file": ("x.png", buffer.getvalue(), "image/png")},
            )
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
    return latencies


def app_from_env():
    from api.app import create_app
    from auditor.config import Settings

    return create_app(Settings())


def write_report(args, load_seconds, results, check_latencies) -> None:
    lines = [
        "# API benchmark",
        "",
        f"Command: `.venv/bin/python bench/api.py --findings {args.findings} --clients "
        f"{args.clients} --requests {args.requests} --seconds {args.seconds:g}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, "
        f"{platform.python_implementation()} {platform.python_version()}, PostgreSQL on "
        "127.0.0.1, uvicorn (1 process) on 127.0.0.1, client in the same machine.",
        "",
        f"Bulk load of {args.findings:,} findings (COPY): {load_seconds:.1f} s",
        "",
        "| findings page (limit 50) | requests | errors | p50 ms | p99 ms | requests/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, (latencies, errors, elapsed) in results.items():
        lines.append(
            f"| {name} | {len(latencies)} | {errors} | {percentile(latencies, 50):.1f} | "
            f"{percentile(latencies, 99):.1f} | {len(latencies) / elapsed:.1f} |"
        )
    lines += [
        "",
        f"Check endpoint (upload, no model: hashes over 10,000 images), sequential, "
        f"{len(check_latencies)} requests: p50 {statistics.median(check_latencies) * 1000:.1f} ms",
        "",
        "Each client starts at the first page (which also counts findings per kind over the whole "
        "audit) and follows next_cursor.",
    ]
    out = ROOT / "bench" / "results" / "api.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
