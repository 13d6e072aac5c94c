"""On-disk feature store keyed by content hash, so a re-audit embeds only new or changed images.

Layout under `data_dir/features/<model id>/`:

    model.json                  the model identity (for people; the directory name is the key)
    _keys/<shard>.npy           the shard's SHA-256 digests, one per row (S32)
    <layer>/<shard>.npy         float32 rows, memory-mapped when read
    _manifests/<shard>.json     rows, and size and SHA-256 of every file above; written last

Shards are append-only and written file by file (temporary file, fsync, rename), the manifest last:
a shard without a manifest never existed, so a crash mid-write leaves nothing that reads as valid.
Two processes filling the same store write different shards and never touch each other's files.
Sizes are checked when the store opens and checksums when a layer of a shard is first read; a
shard that fails either is deleted, its images count as missing and are embedded again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from auditor.embed.backbones import Backbone, ModelIdentity
from auditor.embed.extract import DEFAULT_BATCH_SIZE, DEFAULT_MAX_PIXELS, Failure, iter_embedded
from auditor.embed.weights import file_sha256
from auditor.ingest.sources import Source

KEYS = "_keys"
MANIFESTS = "_manifests"
DEFAULT_SHARD_ROWS = 4096
STALE_SECONDS = 3600


class CorruptShard(Exception):
    """A shard file is missing, torn or altered; the shard is dropped and rebuilt."""


@dataclass
class Shard:
    name: str
    keys: np.ndarray
    files: dict[str, dict]
    verified: set[str] = field(default_factory=set)


def fsync_directory(path: Path) -> None:
    """Make a rename durable: the directory entry is data too."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def array_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def digest_keys(shas: Sequence[str]) -> np.ndarray:
    return np.array([bytes.fromhex(sha) for sha in shas], dtype="S32")


class FeatureStore:
    """The cached vectors of one model; lookups by content SHA-256."""

    def __init__(self, data_dir: Path, identity: ModelIdentity) -> None:
        self.identity = identity
        self.root = Path(data_dir) / "features" / identity.key
        self.root.mkdir(parents=True, exist_ok=True)
        model_file = self.root / "model.json"
        if not model_file.exists():
            write_atomic(model_file, json.dumps(asdict(identity), indent=2).encode())
        self.shards: dict[str, Shard] = {}
        self._index: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._load_manifests()
        self._remove_stale_files()

    def _path(self, kind: str, name: str) -> Path:
        suffix = ".json" if kind == MANIFESTS else ".npy"
        return self.root / kind / f"{name}{suffix}"

    def _load_manifests(self) -> None:
        manifest_dir = self.root / MANIFESTS
        for manifest in sorted(manifest_dir.glob("*.json")) if manifest_dir.is_dir() else []:
            name = manifest.stem
            try:
                files = json.loads(manifest.read_text())["files"]
                for kind, expected in files.items():
                    if self._path(kind, name).stat().st_size != expected["bytes"]:
                        raise CorruptShard(f"{kind}/{name}: size differs from the manifest")
                self._verify(name, KEYS, files[KEYS])
                keys = np.load(self._path(KEYS, name), allow_pickle=False)
            except (CorruptShard, OSError, ValueError, KeyError):
                self._delete_shard(name)
                continue
            self.shards[name] = Shard(name, keys, files, verified={KEYS})
        self._index = None

    def _remove_stale_files(self) -> None:
        """Files of shards whose writer died before the manifest; young ones may be in flight."""
        cutoff = time.time() - STALE_SECONDS
        for path in self.root.glob("*/*"):
            is_manifest = path.parent.name == MANIFESTS and path.suffix == ".json"
            if is_manifest or path.stem in self.shards:
                continue
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)

    def _verify(self, name: str, kind: str, expected: dict) -> None:
        if file_sha256(self._path(kind, name)) != expected["sha256"]:
            raise CorruptShard(f"{kind}/{name}: checksum differs from the manifest")

    def _delete_shard(self, name: str) -> None:
        """Manifest first: once it is gone the other files are garbage, never half a shard."""
        self._path(MANIFESTS, name).unlink(missing_ok=True)
        for kind_dir in self.root.iterdir():
            if kind_dir.is_dir():
                (kind_dir / f"{name}.npy").unlink(missing_ok=True)
        self.shards.pop(name, None)
        self._index = None

    def _lookup_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sorted digests with their shard number and row; rebuilt lazily after changes."""
        if self._index is None:
            shards = list(self.shards.values())
            keys = np.concatenate([s.keys for s in shards]) if shards else np.array([], "S32")
            shard_of = np.concatenate(
                [np.full(len(s.keys), i, np.int32) for i, s in enumerate(shards)] or [[]]
            ).astype(np.int32)
            row_of = np.concatenate([np.arange(len(s.keys)) for s in shards] or [[]]).astype(
                np.int64
            )
            order = np.argsort(keys, kind="stable")
            self._index = (keys[order], shard_of[order], row_of[order])
        return self._index

    def _locate(self, shas: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, shard number, row) per query hash."""
        keys, shard_of, row_of = self._lookup_index()
        queries = digest_keys(shas)
        if len(keys) == 0:
            zeros = np.zeros(len(queries), np.int64)
            return np.zeros(len(queries), bool), zeros, zeros
        positions = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
        found = keys[positions] == queries
        return found, shard_of[positions], row_of[positions]

    def _verify_used(self, shas: Sequence[str], layers: Iterable[str]) -> None:
        """Checksum each layer file of the shards these hashes live in, once per process."""
        found, shard_numbers, _ = self._locate(shas)
        shards = list(self.shards.values())
        for number in np.unique(shard_numbers[found]):
            shard = shards[number]
            try:
                for layer in layers:
                    if layer not in shard.verified:
                        self._verify(shard.name, layer, shard.files[layer])
                        shard.verified.add(layer)
            except (CorruptShard, OSError, KeyError):
                self._delete_shard(shard.name)

    def contains(self, shas: Sequence[str], layers: Iterable[str]) -> np.ndarray:
        """Which hashes have valid vectors for all `layers` (corrupt shards are dropped first)."""
        self._verify_used(shas, list(layers))
        return self._locate(shas)[0]

    def uncached(
        self, items: Sequence[tuple[str, str]], layers: Iterable[str]
    ) -> tuple[np.ndarray, list[tuple[str, str]]]:
        """Which (sha256, path) items have vectors, and one item per hash that has none: a file
        stored under several paths is embedded once."""
        cached = self.contains([sha for sha, _ in items], layers)
        first_path: dict[str, str] = {}
        for (sha, path), hit in zip(items, cached, strict=True):
            if not hit:
                first_path.setdefault(sha, path)
        return cached, list(first_path.items())

    def read(
        self, shas: Sequence[str], dims: dict[str, int], dtype: type = np.float32
    ) -> dict[str, np.ndarray]:
        """Rows aligned with `shas` for each layer in `dims`; zeros where a hash is absent."""
        self._verify_used(shas, list(dims))
        found, shard_numbers, rows = self._locate(shas)
        shards = list(self.shards.values())
        result = {layer: np.zeros((len(shas), dim), dtype) for layer, dim in dims.items()}
        for number in np.unique(shard_numbers[found]):
            selected = found & (shard_numbers == number)
            for layer, out in result.items():
                stored = np.load(
                    self._path(layer, shards[number].name), mmap_mode="r", allow_pickle=False
                )
                out[selected] = stored[rows[selected]]
        return result

    def write_shard(self, shas: Sequence[str], features: dict[str, np.ndarray]) -> str:
        """Append one shard; returns its name. Rows of `features` align with `shas`."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        keys = digest_keys(shas)
        files = {}
        for kind, array in [(KEYS, keys), *features.items()]:
            data = array_bytes(np.ascontiguousarray(array))
            write_atomic(self._path(kind, name), data)
            files[kind] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"rows": len(shas), "files": files}
        write_atomic(self._path(MANIFESTS, name), json.dumps(manifest).encode())
        self.shards[name] = Shard(name, keys, files, verified=set(files))
        self._index = None
        return name


@dataclass
class Embeddings:
    """Vectors aligned with the items (zero rows for failures) and what it took to get them."""

    features: dict[str, np.ndarray]
    failures: list[Failure]
    embedded: int
    reused: int


class ShardWriter:
    """Buffers embedded rows and writes them a shard at a time: few files for a large run, and a
    crash loses at most the rows of one unwritten shard."""

    def __init__(self, store: FeatureStore, layers: Sequence[str], shard_rows: int) -> None:
        self.store = store
        self.shard_rows = shard_rows
        self.shas: list[str] = []
        self.pending: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}

    def add(self, shas: Sequence[str], vectors: dict[str, np.ndarray]) -> None:
        """Rows of every layer in `vectors` align with `shas`."""
        if not shas:
            return
        self.shas.extend(shas)
        for layer, rows in self.pending.items():
            rows.append(vectors[layer])
        if len(self.shas) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if self.shas:
            self.store.write_shard(
                self.shas, {layer: np.concatenate(rows) for layer, rows in self.pending.items()}
            )
            self.shas = []
            self.pending = {layer: [] for layer in self.pending}


def embed_with_cache(
    items: Sequence[tuple[str, str]],
    source: Source,
    backbone: Backbone,
    store: FeatureStore,
    *,
    layers: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_workers: int | None = None,
    threads: int | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Embeddings:
    """Vectors for (sha256, path) items: cached ones read, the rest embedded once per hash.

    Every layer is stored (the forward computes them all); only `layers` are returned, since
    all taps of a large dataset may not fit in memory at once.
    """
    if store.identity != backbone.identity:
        raise ValueError("the feature store belongs to a different model than the backbone")
    wanted = list(layers or backbone.layers)
    cached, misses = store.uncached(items, backbone.layers)

    writer = ShardWriter(store, backbone.layers, shard_rows)
    failed: dict[str, str] = {}
    for indices, vectors, failures in iter_embedded(
        misses,
        source,
        backbone,
        batch_size=batch_size,
        num_workers=num_workers,
        threads=threads,
        progress=progress,
        max_pixels=max_pixels,
    ):
        writer.add([misses[i][0] for i in indices], vectors)
        failed.update((failure.sha256, failure.reason) for failure in failures)
    writer.flush()

    return read_embeddings(store, backbone, items, wanted, failed, len(misses), cached)


def read_embeddings(
    store: FeatureStore,
    backbone: Backbone,
    items: Sequence[tuple[str, str]],
    layers: Sequence[str],
    failed: dict[str, str],
    attempted: int,
    cached: np.ndarray,
) -> Embeddings:
    """The vectors of every item, read back from the store, with the failures by item position."""
    features = store.read(
        [sha for sha, _ in items], {name: backbone.layer_dims[name] for name in layers}
    )
    failures = [
        Failure(index, sha, path, failed[sha])
        for index, (sha, path) in enumerate(items)
        if sha in failed
    ]
    return Embeddings(
        features=features,
        failures=failures,
        embedded=attempted - len(failed),
        reused=int(cached.sum()),
    )
