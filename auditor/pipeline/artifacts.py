"""Per-audit stage outputs on disk, written atomically so a crash never leaves a half-written
checkpoint that a resumed audit would trust."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class AuditArtifacts:
    def __init__(self, data_dir: Path, audit_id: int) -> None:
        self.root = Path(data_dir) / "audits" / str(audit_id)

    def path(self, name: str) -> Path:
        return self.root / name

    def _write(self, name: str, write) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(name)
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    def save_arrays(self, name: str, **arrays: np.ndarray) -> Path:
        return self._write(f"{name}.npz", lambda stream: np.savez(stream, **arrays))

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        target = self.path(f"{name}.npz")
        if not target.is_file():
            return None
        try:
            with np.load(target, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError):
            return None

    def save_json(self, name: str, payload: Any) -> Path:
        data = json.dumps(payload).encode()
        return self._write(f"{name}.json", lambda stream: stream.write(data))

    def load_json(self, name: str) -> Any | None:
        target = self.path(f"{name}.json")
        if not target.is_file():
            return None
        try:
            return json.loads(target.read_text())
        except (OSError, ValueError):
            return None
