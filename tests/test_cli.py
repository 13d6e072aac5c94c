"""The CLI contracts of DESIGN §5, run as a user runs them: a subprocess on a fresh SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from auditor.demo import build_demo_dataset
from auditor.report import finding_reason, member_note
from tests.corpus import encode, noise_image


def auditor(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "AUDITOR_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
        "AUDITOR_DATA_DIR": str(tmp_path / "data"),
        "AUDITOR_WORKERS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "auditor", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def test_dataset_add_json_contract_and_errors(tmp_path):
    root = tmp_path / "pets"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            (root / label / f"{i}.png").write_bytes(
                encode(noise_image(i + 10 * ("cat", "dog").index(label)), "PNG")
            )
    (root / "dog" / "dup.png").write_bytes((root / "cat" / "0.png").read_bytes())

    done = auditor(tmp_path, "dataset", "add", "pets", str(root), "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert payload == {"dataset_id": 1, "images": 5, "findings": {"exact_duplicate": 1}}

    missing = auditor(tmp_path, "dataset", "add", "other", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "source not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_dataset_deliver_adds_only_listed_images_with_vendor(tmp_path):
    root = tmp_path / "pets"
    (root / "cat").mkdir(parents=True)
    for i in range(3):
        (root / "cat" / f"{i}.png").write_bytes(encode(noise_image(i), "PNG"))
    delivery = tmp_path / "week2.csv"
    delivery.write_text("path,label,batch\ndog/0.png,dog,w2\ndog/missing.png,dog,w2\n")
    done = auditor(tmp_path, "dataset", "deliver", "pets", str(delivery))
    assert done.returncode == 2 and "dataset add" in done.stderr
    assert auditor(tmp_path, "dataset", "add", "pets", str(root)).returncode == 0

    # New files arrive in the source; the delivery names one of them (and one that is absent).
    (root / "dog").mkdir()
    for i in range(2):
        (root / "dog" / f"{i}.png").write_bytes(encode(noise_image(10 + i), "PNG"))
    done = auditor(
        tmp_path, "dataset", "deliver", "pets", str(delivery), "--vendor", "acme", "--json"
    )
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert payload["images"] == 5 and payload["decoded"] == 2
    assert sum(payload["findings"].values()) >= 1

    broken = tmp_path / "broken.csv"
    broken.write_text("label\ncat\n")
    done = auditor(tmp_path, "dataset", "deliver", "pets", str(broken))
    assert done.returncode == 2 and "path" in done.stderr and "Traceback" not in done.stderr


def test_db_upgrade(tmp_path):
    done = auditor(tmp_path, "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli.db").stat().st_size > 0


def test_demo_reports_planted_problems(tmp_path):
    done = auditor(tmp_path, "demo", "--per-class", "12", "--epochs", "2")
    assert done.returncode == 0, done.stderr
    assert "exact duplicates  │       5 │     5" in done.stderr
    assert "unreadable files  │       1 │     1" in done.stderr
    assert (tmp_path / "data" / "reports" / "audit-1.html").is_file()
    # stderr is a pipe here, where a live bar shows nothing: each stage gets a plain line instead.
    stage_lines = [line.split()[2] for line in done.stderr.splitlines() if " s  " in line]
    for stage in ("decoding", "embed", "predict", "checks", "summarise"):
        assert stage in stage_lines


def test_run_json_contract(tmp_path):
    root = tmp_path / "digits"
    build_demo_dataset(root, per_class=10)
    done = auditor(tmp_path, "run", str(root), "--epochs", "1", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(payload) == {"dataset_id", "audit_id", "images", "findings", "report"}
    assert payload["images"] == 10 * 10 + 6
    assert payload["findings"]["exact_duplicate"] == 5
    assert payload["findings"]["unreadable"] == 1
    # The JSON is alone on stdout; progress still reaches stderr, so a log shows the stages.
    stage_lines = [line.split()[2] for line in done.stderr.splitlines() if " s  " in line]
    assert {"decoding", "predict", "checks"} <= set(stage_lines)
    report = (tmp_path / payload["report"]).read_text()
    assert "exact_duplicate" in report and "data:image/png;base64," in report

    # A second run over the same folder: the report shows what changed since the first audit.
    again = auditor(tmp_path, "run", str(root), "--epochs", "1", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout.strip().splitlines()[-1])
    report = (tmp_path / second["report"]).read_text()
    assert f"Changes since audit {payload['audit_id']}" in report

    table = auditor(tmp_path, "vendors", str(second["audit_id"]), "--format", "csv", "-o", "v.csv")
    assert table.returncode == 0, table.stderr
    assert (tmp_path / "v.csv").read_text().startswith("level,vendor,batch,class,images")
    missing = auditor(tmp_path, "vendors", "999")
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_report_says_why_a_finding_was_raised():
    outlier = {"mean_neighbour_distance": 820.0, "dataset_median_distance": 400.0, "robust_z": 6.0}
    assert finding_reason(outlier) == "nearest images 2.0x as far as is typical in this dataset"
    assert finding_reason({"reason": "truncated file"}) == "truncated file"
    assert finding_reason({"problems": ["blurry", "dark"]}) == "blurry; dark"
    assert finding_reason({"given_probability": 0.1}) == ""
    pair = {
        "classes": ["automobile", "truck"],
        "recommendation": "clarify",
        "confusion_a_to_b": 0.236,
        "confusion_b_to_a": 0.263,
    }
    assert finding_reason(pair) == (
        "clarify the guideline: the model puts 24% of images labeled automobile in truck, "
        "and 26% of truck in automobile"
    )
    pair["examples"] = [{"image_id": 7, "label": "truck", "predicted": "automobile"}]
    assert member_note(pair, 7) == " &middot; truck, predicted automobile"
    assert member_note(pair, 8) == ""
