"""One store for what is slow to compute and read back later: rollouts, shaped rewards, stop rewards
and evaluation runs, each a file named by a digest of everything that decides its content.

    ArtifactStore(root)
    ├── rollouts/<key>.jsonl           sampled rollouts (key: model, prompts, sampling, steering policy)
    ├── rollouts/shaping-<key>.json    shaped per-action rewards of some rollout files
    ├── rollouts/stops-<key>.json      rewards of the answers ended at each sentence end
    └── eval-cache/<key>.json          decoding runs and latencies of ``personalize eval`` (RunCache)

Every file is written whole or not at all (a temporary file, then a rename), so an interrupted job
leaves nothing half-written to be read back. A file is reused only under the same key: anything
that would change its content is part of the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from personalize.progress import Quiet, Reporter

T = TypeVar("T")
Compute = Callable[[Callable[[float], None]], T]
"""Computes a value, calling ``advance(n)`` as it goes."""


def digest(material: object, length: int = 16) -> str:
    """A short stable key of JSON-able ``material`` (anything else by its ``str``)."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:length]


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: readers see all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class RunCache:
    """Decoding runs and latencies stored as JSON files named by the digest of what decides them."""

    VERSION = 1

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.hits = 0

    def key(self, material: Mapping[str, object]) -> str:
        return digest({"cache_version": self.VERSION, **material}, length=32)

    def get(self, key: str) -> dict[str, object] | None:
        path = self.directory / f"{key}.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):  # absent, or cut off while written: decode again
            return None
        self.hits += 1
        return dict(value)

    def put(self, key: str, value: Mapping[str, object]) -> None:
        write_whole(self.directory / f"{key}.json", json.dumps(value))


class ArtifactStore:
    """The files of one data directory's stored work (see the module docstring)."""

    def __init__(self, root: Path, reporter: Reporter | None = None) -> None:
        self.root = Path(root)
        self.reporter: Reporter = reporter or Quiet()

    @property
    def rollouts_dir(self) -> Path:
        return self.root / "rollouts"

    def runs(self, directory: Path | None = None) -> RunCache:
        """The evaluation's run cache (in ``eval-cache/`` unless ``directory`` says elsewhere)."""
        return RunCache(directory or self.root / "eval-cache")

    def rollouts_path(self, material: object) -> Path:
        return self.rollouts_dir / f"{digest(material)}.jsonl"

    def rollouts(
        self, material: object, label: str, total: int, sample: Compute[Sequence[Any]]
    ) -> tuple[list[Any], Path]:
        """The rollouts stored under ``material``, else ``sample``\\ d now (progress under ``label``) and stored."""
        from personalize.training.rollouts import load_rollouts, save_rollouts

        path = self.rollouts_path(material)
        if path.is_file():
            rollouts = load_rollouts(path)
            self.reporter.note(f"reusing {len(rollouts)} rollouts from {path}")
            return rollouts, path
        with self.reporter.task(label, total=total) as task:
            rollouts = list(sample(task.advance))
        save_rollouts(rollouts, path)
        return rollouts, path

    def derived(
        self, kind: str, files: Sequence[Path], material: Sequence[object], what: str, label: str, compute: Compute[T]
    ) -> T:
        """A value computed from the rollout ``files`` (stored beside the last one as ``<kind>-<key>.json``,
        the key made of the files' names and ``material``), or read back; ``what`` names it in notes,
        ``label`` in progress."""
        stored = files[-1].parent / f"{kind}-{digest([[f.name for f in files], *material])}.json"
        if stored.is_file():
            self.reporter.note(f"reusing {what} from {stored}")
            value: T = json.loads(stored.read_text())
            return value
        with self.reporter.task(label, total=None) as task:
            value = compute(task.advance)
        write_whole(stored, json.dumps(value))
        return value
