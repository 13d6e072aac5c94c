"""Where images come from: an ImageFolder tree, a CSV/JSONL manifest, or a zip/tar archive.

A source lists entries (path as given, label, split, vendor, batch) and reads the bytes of one path.
Every path is checked against the source root before it is opened: absolute paths, `..` escapes and
symlinks pointing outside the root are refused, never followed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

MANIFEST_SUFFIXES = (".csv", ".jsonl")
ARCHIVE_MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl", "labels.csv", "labels.jsonl")
IGNORED_NAMES = {"Thumbs.db", "desktop.ini"}


class SourceError(ValueError):
    """The source as a whole cannot be read (not found, unsupported, malformed manifest)."""


class CorruptMember(OSError):
    """An archive member whose bytes cannot be trusted (bad header, short read, CRC mismatch)."""


class NotARegularFile(OSError):
    """A path that names a FIFO, socket or device: reading it could block or never end."""


class PathRefused(Exception):
    """A path that must not be opened because it leaves the source root."""


@dataclass(frozen=True)
class SourceEntry:
    path: str
    label: str | None = None
    split: str | None = None
    vendor: str | None = None
    batch: str | None = None
    row: int | None = None


def normalise_member_path(path: str) -> str:
    """Return a clean relative POSIX path, or raise PathRefused for absolute or escaping paths."""
    if not path or "\x00" in path:
        raise PathRefused("empty path or NUL byte in path")
    posix = path.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise PathRefused("absolute path is not allowed")
    clean = posixpath.normpath(posix)
    if clean == ".." or clean.startswith("../"):
        raise PathRefused("path escapes the dataset root")
    return clean


class Source:
    kind: str = ""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def entries(self) -> Iterator[SourceEntry]:
        raise NotImplementedError

    def why_empty(self) -> str:
        """What to tell a user whose source listed no images, beyond that it listed none."""
        return ""

    def stamp(self, path: str) -> str | None:
        """A cheap fingerprint (size and mtime or CRC); None if the file is not there."""
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError


class DirectorySource(Source):
    """Files under a root directory; the base of the folder and manifest sources."""

    def __init__(self, uri: str, root: Path) -> None:
        super().__init__(uri)
        self.root = root.resolve()
        self._root_prefix = os.path.join(str(self.root), "")
        self._folder_inside: dict[str, bool] = {}

    def _inside_root(self, real: str) -> bool:
        return real == str(self.root) or real.startswith(self._root_prefix)

    def resolve(self, path: str) -> str:
        """The file's location, refused when a link leads it outside the root.

        Checking every component costs more than decoding a small image, and embedding reads
        tens of thousands of them: each folder is resolved once, and only a file that is itself
        a link is followed in full. Plain strings, since pathlib's objects cost more than the
        file read at this size."""
        relative = normalise_member_path(path)
        folder = posixpath.dirname(relative)
        inside = self._folder_inside.get(folder)
        if inside is None:
            real_folder = os.path.realpath(os.path.join(self.root, folder))
            inside = self._folder_inside[folder] = self._inside_root(real_folder)
        target = os.path.join(self._root_prefix, relative)
        if not inside or (
            os.path.islink(target) and not self._inside_root(os.path.realpath(target))
        ):
            raise PathRefused("symlink points outside the dataset root")
        return target

    def stamp(self, path: str) -> str | None:
        try:
            st = os.stat(self.resolve(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def size(self, path: str) -> int:
        return os.stat(self.resolve(path)).st_size

    def read_bytes(self, path: str) -> bytes:
        # Non-blocking open: a FIFO planted in the dataset must not hang the reader.
        descriptor = os.open(self.resolve(path), os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(descriptor)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(info.st_mode):
                raise NotARegularFile(path)
            chunks = []
            while chunk := os.read(descriptor, max(info.st_size, 1 << 16)):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(descriptor)


class FolderSource(DirectorySource):
    """ImageFolder layout: `root/<class>/.../<image>`; the first directory level is the label."""

    kind = "folder"

    def __init__(self, root: Path) -> None:
        super().__init__(str(root), root)

    def why_empty(self) -> str:
        """A flat folder of images is the usual mistake: its files have no class folder."""
        top_level = [
            entry.name
            for entry in os.scandir(self.root)
            if entry.is_file() and not entry.name.startswith(".")
        ]
        if not top_level:
            return ""
        return (
            f": a folder is read as one subfolder per class (<class>/<image>), and its "
            f"{len(top_level)} files at the top level (such as {sorted(top_level)[0]}) belong to "
            "none; for a flat folder, pass a CSV manifest with path,label columns as the source"
        )

    def entries(self) -> Iterator[SourceEntry]:
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            relative_dir = Path(dirpath).relative_to(self.root)
            if relative_dir == Path("."):
                # Symlinked class folders are listed as entries so they are refused or read, not lost.
                for name in dirnames:
                    if (Path(dirpath) / name).is_symlink():
                        yield SourceEntry(path=name, label=name)
                continue
            label = relative_dir.parts[0]
            for name in sorted(filenames):
                if name.startswith(".") or name in IGNORED_NAMES:
                    continue
                yield SourceEntry(path=(relative_dir / name).as_posix(), label=label)
            for name in dirnames:
                if (Path(dirpath) / name).is_symlink():
                    yield SourceEntry(path=(relative_dir / name).as_posix(), label=label)


def read_manifest_rows(text: str, suffix: str, where: str) -> Iterator[SourceEntry]:
    """Rows of a CSV (header required) or JSONL manifest; `path` and `label` columns."""
    if suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: line {number} is not JSON: {exc.msg}") from exc
            if not isinstance(row, dict):
                raise SourceError(f"{where}: line {number} is not a JSON object")
            yield manifest_entry(row, number, where)
        return
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "path" not in [f.strip() for f in reader.fieldnames]:
        raise SourceError(f"{where}: a CSV manifest needs a header with a 'path' column")
    for number, row in enumerate(reader, start=2):
        yield manifest_entry({(k or "").strip(): v for k, v in row.items()}, number, where)


def manifest_entry(row: dict, number: int, where: str) -> SourceEntry:
    def field(name: str) -> str | None:
        value = row.get(name)
        if value is None:
            return None
        value = str(value).strip()
        return value or None

    path = field("path") or field("image")
    if path is None:
        raise SourceError(f"{where}: row {number} has no path")
    return SourceEntry(
        path=path,
        label=field("label"),
        split=field("split"),
        vendor=field("vendor"),
        batch=field("batch"),
        row=number,
    )


class ManifestSource(DirectorySource):
    """A CSV or JSONL manifest; paths are relative to the manifest's folder."""

    kind = "manifest"

    def __init__(self, manifest: Path) -> None:
        super().__init__(str(manifest), manifest.parent)
        self.manifest = manifest

    def entries(self) -> Iterator[SourceEntry]:
        text = self.manifest.read_text(encoding="utf-8-sig")
        yield from read_manifest_rows(text, self.manifest.suffix.lower(), self.manifest.name)


class ArchiveSource(Source):
    """A zip or tar read in place: ImageFolder layout inside, or a manifest at its top level."""

    def __init__(self, archive: Path) -> None:
        super().__init__(str(archive))
        self.archive = archive.resolve()  # once: resolving per read cost as much as the read
        self._handle = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def index(self) -> ArchiveIndex:
        raise NotImplementedError

    def read_member(self, name: str) -> bytes:
        raise NotImplementedError

    def entries(self) -> Iterator[SourceEntry]:
        names = self.index().names
        manifest = next((n for n in ARCHIVE_MANIFEST_NAMES if n in names), None)
        if manifest:
            text = self.read_member(manifest).decode("utf-8-sig")
            yield from read_manifest_rows(
                text, Path(manifest).suffix, f"{self.archive.name}:{manifest}"
            )
            return
        for name in names:
            base = posixpath.basename(name)
            if not base or base.startswith(".") or base in IGNORED_NAMES or name.endswith("/"):
                continue
            try:
                clean = normalise_member_path(name)
            except PathRefused:
                yield SourceEntry(path=name)
                continue
            parts = clean.split("/")
            yield SourceEntry(path=name, label=parts[0] if len(parts) > 1 else None)

    def _lookup(self, path: str) -> tuple[int, str, object]:
        clean = normalise_member_path(path)
        index = self.index()
        if clean in index.links:
            raise PathRefused("links inside archives are not followed")
        if clean not in index.members:
            raise FileNotFoundError(path)
        return index.members[clean]

    def stamp(self, path: str) -> str | None:
        try:
            return self._lookup(path)[1]
        except FileNotFoundError:
            return None

    def size(self, path: str) -> int:
        return self._lookup(path)[0]


@dataclass(frozen=True)
class ArchiveIndex:
    """Regular-file members by clean path -> (size, stamp, member info), and link members."""

    names: tuple[str, ...]
    members: dict[str, tuple[int, str, object]]
    links: frozenset[str]


def archive_key(archive: Path) -> tuple[str, int, int]:
    """`archive` is a resolved path. One version of an archive file: the index is rebuilt when
    the file changes."""
    info = archive.stat()
    return str(archive), info.st_size, info.st_mtime_ns


@dataclass(frozen=True)
class ZipArchive:
    """A zip's central directory, parsed once per file version and inherited by forked loader
    workers (parsing a 50,000-member archive takes 0.4 s, longer than a worker then spends
    decoding a small dataset), and one descriptor read with `os.pread`: a positioned read never
    moves a shared file offset, so threads and forked processes can all read through it."""

    file: io.FileIO
    by_name: dict[str, zipfile.ZipInfo]
    index: ArchiveIndex


@lru_cache(maxsize=8)
def zip_archive(key: tuple[str, int, int]) -> ZipArchive:
    with zipfile.ZipFile(key[0]) as handle:
        infos = handle.infolist()
    names, members, by_name = [], {}, {}
    for info in infos:
        if info.is_dir():
            continue
        names.append(info.filename)
        by_name[info.filename] = info
        try:
            clean = normalise_member_path(info.filename)
        except PathRefused:
            continue
        members[clean] = (info.file_size, f"{info.file_size}:{info.CRC:08x}", info)
    index = ArchiveIndex(tuple(names), members, frozenset())
    return ZipArchive(open(key[0], "rb", buffering=0), by_name, index)  # noqa: SIM115 - kept open


LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, fixed fields, name and extra lengths


def read_zip_member(archive: ZipArchive, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, checked as `zipfile` checks them (size and CRC-32), at a quarter of
    its cost per small member: no per-read objects and no lock."""
    if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(archive.file.name) as handle:  # encrypted, bzip2, lzma: rare
            return handle.read(info)
    fd = archive.file.fileno()
    header = os.pread(fd, LOCAL_HEADER.size, info.header_offset)
    if len(header) != LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise CorruptMember(f"bad local header for {info.filename}")
    _, name_length, extra_length = LOCAL_HEADER.unpack(header)
    start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
    raw = os.pread(fd, info.compress_size, start)
    if len(raw) != info.compress_size:
        raise CorruptMember(f"{info.filename} is truncated")
    data = raw
    if info.compress_type == zipfile.ZIP_DEFLATED:
        try:
            # Bounded by the declared size, so a member that inflates beyond it is not expanded.
            data = zlib.decompressobj(-15).decompress(raw, info.file_size + 1)
        except zlib.error as exc:
            raise CorruptMember(f"{info.filename}: {exc}") from None
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise CorruptMember(f"bad CRC-32 or size for {info.filename}")
    return data


@lru_cache(maxsize=8)
def tar_index(key: tuple[str, int, int, int]) -> ArchiveIndex:
    """The member index of a tar, per process (listing a tar reads it end to end)."""
    names, members, links = [], {}, set()
    with tarfile.open(key[0]) as handle:
        for info in handle.getmembers():
            if info.isfile() or info.issym() or info.islnk():
                names.append(info.name)
            try:
                clean = normalise_member_path(info.name)
            except PathRefused:
                continue
            if info.issym() or info.islnk():
                links.add(clean)
            elif info.isfile():
                members[clean] = (info.size, f"{info.size}:{info.mtime}", info)
    return ArchiveIndex(tuple(names), members, frozenset(links))


class ZipSource(ArchiveSource):
    kind = "zip"

    def _zip(self) -> ZipArchive:
        return zip_archive(archive_key(self.archive))

    def index(self) -> ArchiveIndex:
        return self._zip().index

    def read_member(self, name: str) -> bytes:
        archive = self._zip()
        if name not in archive.by_name:
            raise FileNotFoundError(name)
        return read_zip_member(archive, archive.by_name[name])

    def read_bytes(self, path: str) -> bytes:
        archive = self._zip()
        clean = normalise_member_path(path)
        if clean not in archive.index.members:
            raise FileNotFoundError(path)
        return read_zip_member(archive, archive.index.members[clean][2])


class TarSource(ArchiveSource):
    """Tar handles are not shared between threads; each source object opens its own."""

    kind = "tar"

    def _tar(self) -> tarfile.TarFile:
        if self._handle is None:
            self._handle = tarfile.open(self.archive)  # noqa: SIM115 - open for the source lifetime
        return self._handle

    def index(self) -> ArchiveIndex:
        return tar_index(archive_key(self.archive))

    def read_member(self, name: str) -> bytes:
        member = self._tar().getmember(name)
        extracted = self._tar().extractfile(member)
        if extracted is None or not member.isfile():
            raise FileNotFoundError(name)
        return extracted.read()

    def read_bytes(self, path: str) -> bytes:
        clean = normalise_member_path(path)
        index = self.index()
        if clean in index.links:
            raise PathRefused("links inside archives are not followed")
        if clean not in index.members:
            raise FileNotFoundError(path)
        extracted = self._tar().extractfile(index.members[clean][2])
        if extracted is None:
            raise FileNotFoundError(path)
        return extracted.read()


def open_source(uri: str | Path) -> Source:
    """Pick the source type from what the path is."""
    path = Path(uri)
    if not path.exists():
        raise SourceError(f"source not found: {path}")
    if path.is_dir():
        return FolderSource(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ZipSource(path)
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return TarSource(path)
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return ManifestSource(path)
    raise SourceError(
        f"unsupported source {path}: expected a folder, a .csv/.jsonl manifest, or a .zip/.tar archive"
    )


@dataclass(frozen=True)
class Delivery:
    """A labeling vendor's delivery: a `path,label[,split][,vendor][,batch]` manifest naming new
    images (paths under the dataset's source) and/or new labels for images already registered.
    `vendor` and `batch` fill rows that leave those columns empty."""

    manifest: Path
    vendor: str | None = None
    batch: str | None = None


def delivery_entries(delivery: Delivery) -> list[SourceEntry]:
    if not delivery.manifest.is_file():
        raise SourceError(f"delivery manifest not found: {delivery.manifest}")
    text = delivery.manifest.read_text(encoding="utf-8-sig")
    rows = [
        replace(
            row,
            vendor=row.vendor or delivery.vendor,
            batch=row.batch or delivery.batch,
        )
        for row in read_manifest_rows(
            text, delivery.manifest.suffix.lower(), delivery.manifest.name
        )
    ]
    if not rows:
        raise SourceError(f"delivery manifest {delivery.manifest} names no images")
    return rows


def apply_labels_file(entries: Iterator[SourceEntry], labels_file: Path) -> Iterator[SourceEntry]:
    """Override labels (and vendor, batch, split when given) from a `path,label` CSV or JSONL."""
    if not labels_file.is_file():
        raise SourceError(f"labels file not found: {labels_file}")
    text = labels_file.read_text(encoding="utf-8-sig")
    overrides = {}
    for row in read_manifest_rows(text, labels_file.suffix.lower(), labels_file.name):
        try:
            overrides[normalise_member_path(row.path)] = row
        except PathRefused:
            continue
    for entry in entries:
        try:
            key = normalise_member_path(entry.path)
        except PathRefused:
            yield entry
            continue
        row = overrides.get(key)
        if row is None:
            yield replace(entry, label=None)
            continue
        yield replace(
            entry,
            label=row.label,
            split=row.split or entry.split,
            vendor=row.vendor or entry.vendor,
            batch=row.batch or entry.batch,
        )
