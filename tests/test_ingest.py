"""Ingest on real SQLite and PostgreSQL: every file accounted for, incremental re-adds, sources."""

from __future__ import annotations

import csv
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

import auditor.parallel
from auditor.config import Settings
from auditor.db.models import Class, Dataset, Finding, FindingImage, Image, Label
from auditor.ingest.decode import decode_entry
from auditor.ingest.ingest import ingest
from auditor.ingest.sources import (
    CorruptMember,
    NotARegularFile,
    PathRefused,
    SourceError,
    open_source,
)
from auditor.ingest.status import ImageStatus
from tests.corpus import EXPECTED, encode, noise_image, write_hostile_corpus

SETTINGS = Settings(workers=1)


def findings_by_image(session, dataset_id: int) -> dict[int, list[Finding]]:
    rows = session.execute(
        select(FindingImage.image_id, Finding)
        .join(Finding, Finding.id == FindingImage.finding_id)
        .where(Finding.dataset_id == dataset_id)
    )
    found: dict[int, list[Finding]] = {}
    for image_id, finding in rows:
        found.setdefault(image_id, []).append(finding)
    return found


def reason_text(finding: Finding) -> str:
    evidence = finding.evidence
    return " ".join([str(evidence.get("reason", "")), *evidence.get("problems", [])])


def test_hostile_corpus_every_file_accounted_for(session_factory, tmp_path):
    root = write_hostile_corpus(tmp_path / "data", tmp_path / "outside")
    result = ingest(session_factory, "hostile", root, Settings(workers=2, max_image_pixels=10**8))

    assert result.images == len(EXPECTED)
    with session_factory() as session:
        images = {
            img.path: img
            for img in session.scalars(select(Image).where(Image.dataset_id == result.dataset_id))
        }
        findings = findings_by_image(session, result.dataset_id)
        assert set(images) == set(EXPECTED)
        for path, expected in EXPECTED.items():
            image = images[path]
            kinds = {f.kind for f in findings.get(image.id, [])}
            if expected == "ok":
                assert image.status == "ok", (path, image.error)
                assert not kinds & {"unreadable", "image_quality"}, path
                assert image.sha256 and image.phash and image.width > 0
                continue
            kind, fragment = expected
            assert kind in kinds, (path, kinds, image.error)
            if kind in ("unreadable", "image_quality"):
                (finding,) = [f for f in findings[image.id] if f.kind == kind]
                assert fragment.lower() in reason_text(finding).lower(), (path, finding.evidence)

        assert images["dog/rotated.jpg"].width == 20 and images["dog/rotated.jpg"].height == 40
        assert images["dog/cmyk.jpg"].mode == "CMYK"
        assert images["dog/animated.gif"].stats["frames"] == 2
        assert images["cat/bomb.png"].width is None, "a bomb must never be decoded"
        duplicate = next(
            f for f in findings[images["cat/ok_0.png"].id] if f.kind == "exact_duplicate"
        )
        assert sorted(duplicate.evidence["paths"]) == ["cat/ok_0.png", "dog/copy of ok_0.png"]
        assert duplicate.evidence["labels_differ"] is True
        assert result.findings["unreadable"] == 8


def test_readd_is_incremental_and_labels_keep_history(session_factory, tmp_path):
    root = tmp_path / "data"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(
                encode(noise_image(hash((label, i)) % 1000), "PNG")
            )
    first = ingest(session_factory, "pets", root, SETTINGS)
    assert (first.images, first.decoded, first.skipped_unchanged) == (6, 6, 0)

    again = ingest(session_factory, "pets", root, SETTINGS)
    assert (again.images, again.decoded, again.skipped_unchanged) == (6, 0, 6)

    (root / "cat" / "3.png").write_bytes(encode(noise_image(500), "PNG"))
    (root / "cat" / "0.png").write_bytes(encode(noise_image(501), "PNG"))
    third = ingest(session_factory, "pets", root, SETTINGS)
    assert (third.images, third.decoded, third.skipped_unchanged) == (7, 2, 5)

    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for label in ("cat", "dog"):
            for i in range(3):
                writer.writerow([f"{label}/{i}.png", "dog" if (label, i) == ("cat", 1) else label])
        writer.writerow(["cat/3.png", "cat"])
    fourth = ingest(session_factory, "pets", root, SETTINGS, labels_file=manifest)
    assert fourth.decoded == 0
    with session_factory() as session:
        image = session.scalar(
            select(Image).where(Image.path == "cat/1.png", Image.dataset_id == first.dataset_id)
        )
        history = session.execute(
            select(Class.name, Label.is_current)
            .join(Class)
            .where(Label.image_id == image.id)
            .order_by(Label.id)
        ).all()
        assert history == [("cat", False), ("dog", True)]
        assert (
            session.scalar(select(func.count(Image.id)).where(Image.dataset_id == first.dataset_id))
            == 7
        )
        assert (
            session.scalar(
                select(func.count(Label.id)).join(Image).where(Image.dataset_id == first.dataset_id)
            )
            == 8
        )


def test_manifest_rows_missing_escaping_duplicate_and_unknown(session_factory, tmp_path):
    data = tmp_path / "set"
    (data / "img").mkdir(parents=True)
    for i in range(3):
        (data / "img" / f"{i}.png").write_bytes(encode(noise_image(20 + i), "PNG"))
    (tmp_path / "outside.png").write_bytes(encode(noise_image(30), "PNG"))
    rows = [
        {"path": "img/0.png", "label": "cat", "split": "train", "vendor": "acme", "batch": "b1"},
        {"path": "img/0.png", "label": "cat", "split": "train", "vendor": "acme", "batch": "b1"},
        {"path": "img/1.png", "label": "dog", "split": "test"},
        {"path": "img/1.png", "label": "cat", "split": "test"},
        {"path": "img/2.png", "label": "zebra"},
        {"path": "img/missing.png", "label": "cat"},
        {"path": "../outside.png", "label": "cat"},
        {"path": "/etc/passwd", "label": "cat"},
    ]
    manifest = data / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")

    result = ingest(session_factory, "manifest", manifest, SETTINGS, classes_file=classes)

    assert result.duplicate_rows == 2
    with session_factory() as session:
        images = {
            i.path: i
            for i in session.scalars(select(Image).where(Image.dataset_id == result.dataset_id))
        }
        findings = findings_by_image(session, result.dataset_id)
        assert set(images) == {
            "img/0.png",
            "img/1.png",
            "img/2.png",
            "img/missing.png",
            "../outside.png",
            "/etc/passwd",
        }
        assert images["img/missing.png"].status == "missing"
        assert images["../outside.png"].status == "refused"
        assert images["/etc/passwd"].status == "refused"
        assert images["img/0.png"].split == "train"
        kinds = {path: {f.kind for f in findings.get(img.id, [])} for path, img in images.items()}
        assert kinds["img/1.png"] == {"invalid_label"}
        assert kinds["img/2.png"] == {"invalid_label"}
        assert kinds["img/0.png"] == set()
        assert {"unreadable"} <= kinds["img/missing.png"]
        zebra = session.scalar(
            select(Class).where(Class.dataset_id == result.dataset_id, Class.name == "zebra")
        )
        assert zebra is not None and zebra.in_taxonomy is False
        acme_label = session.scalar(select(Label).where(Label.image_id == images["img/0.png"].id))
        assert acme_label.source == "acme" and acme_label.batch_id is not None


def make_archive_members(tmp_path: Path) -> dict[str, bytes]:
    return {
        "cat/a.png": encode(noise_image(40), "PNG"),
        "dog/b.png": encode(noise_image(41), "PNG"),
        "dog/c.png": b"not an image",
    }


def test_zip_read_in_place_and_zip_slip_refused(session_factory, tmp_path):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in make_archive_members(tmp_path).items():
            handle.writestr(name, data)
        handle.writestr("../evil.png", encode(noise_image(42), "PNG"))
    result = ingest(session_factory, "zipped", archive, Settings(workers=2))
    with session_factory() as session:
        images = {
            i.path: i
            for i in session.scalars(select(Image).where(Image.dataset_id == result.dataset_id))
        }
    assert images["cat/a.png"].status == "ok" and images["dog/b.png"].status == "ok"
    assert images["dog/c.png"].status == "unreadable"
    assert images["../evil.png"].status == "refused"
    assert result.findings == {"unreadable": 2}
    again = ingest(session_factory, "zipped", archive, Settings(workers=1))
    assert again.decoded == 0


def test_a_relative_source_is_kept_as_an_absolute_path(session_factory, tmp_path, monkeypatch):
    """The worker, the API and the report read images later, from another directory."""
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in make_archive_members(tmp_path).items():
            handle.writestr(name, data)
    monkeypatch.chdir(tmp_path)
    result = ingest(session_factory, "relative", Path("set.zip"), Settings(workers=1))
    with session_factory() as session:
        assert session.get(Dataset, result.dataset_id).source_uri == str(archive.resolve())
        # A dataset stored with a relative source before is moved to the absolute path on re-add.
        session.get(Dataset, result.dataset_id).source_uri = "set.zip"
        session.commit()
    again = ingest(session_factory, "relative", archive, Settings(workers=1))
    assert again.decoded == 0
    monkeypatch.chdir("/")
    with session_factory() as session:
        source = open_source(session.get(Dataset, result.dataset_id).source_uri)
    assert source.read_bytes("cat/a.png") == make_archive_members(tmp_path)["cat/a.png"]


def test_tar_with_labels_file_and_link_member(session_factory, tmp_path):
    archive = tmp_path / "set.tar"
    with tarfile.open(archive, "w") as handle:
        for name, data in make_archive_members(tmp_path).items():
            path = tmp_path / "member"
            path.write_bytes(data)
            handle.add(path, arcname=name)
        link = tarfile.TarInfo("dog/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        handle.addfile(link)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncat/a.png,tabby\ndog/b.png,husky\n")
    result = ingest(session_factory, "tarred", archive, SETTINGS, labels_file=labels)
    with session_factory() as session:
        images = {
            i.path: i
            for i in session.scalars(select(Image).where(Image.dataset_id == result.dataset_id))
        }
        names = set(
            session.scalars(select(Class.name).where(Class.dataset_id == result.dataset_id))
        )
    assert images["dog/link.png"].status == "refused"
    assert names == {"tabby", "husky"}


def test_one_class_dataset_and_empty_folder(session_factory, tmp_path):
    only = tmp_path / "only" / "cat"
    only.mkdir(parents=True)
    for i in range(2):
        (only / f"{i}.png").write_bytes(encode(noise_image(60 + i), "PNG"))
    result = ingest(session_factory, "single", tmp_path / "only", SETTINGS)
    assert result.images == 2 and result.findings == {}

    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found") as empty:
        ingest(session_factory, "empty", tmp_path / "empty", SETTINGS)
    assert "top level" not in str(empty.value)
    # A flat folder of images (a common export) names the layout it lacks and the way out.
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        (flat / f"{i}.png").write_bytes(encode(noise_image(70 + i), "PNG"))
    with pytest.raises(SourceError, match=r"2 files at the top level \(such as 0.png\)"):
        ingest(session_factory, "flat", flat, SETTINGS)
    manifest = flat / "labels.csv"
    manifest.write_text("path,label\n0.png,cat\n1.png,dog\n")
    assert ingest(session_factory, "flat", manifest, SETTINGS).images == 2
    with pytest.raises(SourceError, match="source not found"):
        ingest(session_factory, "nowhere", tmp_path / "nowhere", SETTINGS)
    bad_manifest = tmp_path / "bad.csv"
    bad_manifest.write_text("file,label\na.png,cat\n")
    with pytest.raises(SourceError, match="'path' column"):
        ingest(session_factory, "bad", bad_manifest, SETTINGS)


def test_given_hierarchy_is_validated_before_anything_is_written(session_factory, tmp_path):
    root = tmp_path / "pets"
    for label in ("cat", "dog", "truck"):
        (root / label).mkdir(parents=True)
        (root / label / "0.png").write_bytes(
            encode(noise_image(len(label) * 7 + ord(label[0])), "PNG")
        )
    cyclic = tmp_path / "cyclic.csv"
    cyclic.write_text(
        "class,parent\ncat,animal\ndog,animal\ntruck,vehicle\nanimal,vehicle\nvehicle,animal\n"
    )
    with pytest.raises(SourceError, match="cycle"):
        ingest(session_factory, "pets", root, SETTINGS, hierarchy_file=cyclic)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("class,parent\ncat,animal\ndog,animal\ntruck,vehicle\nzebra,animal\n")
    with pytest.raises(SourceError, match="zebra"):
        ingest(session_factory, "pets", root, SETTINGS, hierarchy_file=unknown)
    with session_factory() as session:
        assert session.scalar(select(func.count(Image.id))) == 0

    good = tmp_path / "good.csv"
    good.write_text("class,parent\ncat,animal\ndog,animal\ntruck,vehicle\n")
    result = ingest(session_factory, "pets", root, SETTINGS, hierarchy_file=good)
    with session_factory() as session:
        tree = session.get(Dataset, result.dataset_id).hierarchy
    assert {child["name"] for child in tree["children"]} == {"animal", "vehicle"}


def test_worker_processes_decode_in_order(session_factory, tmp_path, monkeypatch):
    # Processes however cheap the work: these tiny images would otherwise decode inline.
    monkeypatch.setattr(auditor.parallel, "WORKER_START_SECONDS", 0.0)
    count = 400
    root = tmp_path / "many"
    (root / "dots").mkdir(parents=True)
    for i in range(count):
        PILImage.new("RGB", (9, 9), (i % 256, (i // 256) * 40, 7)).save(
            root / "dots" / f"{i:04d}.png"
        )
    seen: list[int] = []
    result = ingest(
        session_factory,
        "many",
        root,
        Settings(workers=2),
        progress=lambda done, _: seen.append(done),
    )
    assert result.decoded == count and seen[-1] == count
    assert seen == sorted(seen) and len(seen) > 1
    with session_factory() as session:
        images = session.scalars(select(Image).where(Image.dataset_id == result.dataset_id)).all()
    assert len({image.sha256 for image in images}) == count
    assert all(image.width == 9 and image.status == "ok" for image in images)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_members_read_as_zipfile_reads_them_and_corruption_is_a_finding(tmp_path, compression):
    archive = tmp_path / "set.zip"
    images = {f"cat/{i}.png": encode(noise_image(i, (16, 16)), "PNG") for i in range(3)}
    with zipfile.ZipFile(archive, "w", compression) as bundle:
        for name, data in images.items():
            bundle.writestr(name, data)
    source = open_source(archive)
    assert {e.path: source.read_bytes(e.path) for e in source.entries()} == images

    with zipfile.ZipFile(archive) as bundle:
        info = bundle.getinfo("cat/1.png")
        data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(archive.read_bytes())
    raw[data_start + info.compress_size // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(raw))
    damaged = open_source(corrupt)
    assert damaged.read_bytes("cat/0.png") == images["cat/0.png"]
    with pytest.raises(CorruptMember):
        damaged.read_bytes("cat/1.png")
    outcome = decode_entry(damaged, "cat/1.png", max_pixels=10**8, max_bytes=10**8)
    assert outcome.status == ImageStatus.UNREADABLE and "cat/1.png" in outcome.error


@pytest.mark.timeout(20)
def test_folder_reads_refuse_what_is_not_a_regular_file_without_blocking(tmp_path):
    """A FIFO would block a plain open() for ever; a folder or a link out of the root must not
    be read either. All fail at once with the error the callers turn into a finding."""
    cat = tmp_path / "data" / "cat"
    cat.mkdir(parents=True)
    (cat / "ok.png").write_bytes(b"bytes")
    os.mkfifo(cat / "pipe.png")
    (cat / "folder.png").mkdir()
    os.symlink(tmp_path / "data" / "cat" / "ok.png", cat / "inside.png")
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", cat / "escape.png")
    source = open_source(tmp_path / "data")

    assert source.read_bytes("cat/ok.png") == b"bytes"
    assert source.read_bytes("cat/inside.png") == b"bytes"
    for path, error in (
        ("cat/pipe.png", NotARegularFile),
        ("cat/folder.png", IsADirectoryError),
        ("cat/missing.png", FileNotFoundError),
    ):
        with pytest.raises(error):
            source.read_bytes(path)
    reasons = {
        path: decode_entry(source, path, max_pixels=10**8, max_bytes=10**8).error
        for path in ("cat/pipe.png", "cat/folder.png", "cat/missing.png")
    }
    assert reasons == {
        "cat/pipe.png": "not a regular file (a FIFO, socket or device)",
        "cat/folder.png": "is a directory, not a file",
        "cat/missing.png": "file not found",
    }
    with pytest.raises(PathRefused):
        source.read_bytes("cat/escape.png")
    with pytest.raises(PathRefused):
        source.read_bytes("../secret.png")
