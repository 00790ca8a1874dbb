"""Head artifacts stored by content under the artifact root, and registered in the database.

A stored head lives in ``<root>/<sha[:2]>/<sha>/`` where ``sha`` is the sha256 over
its sorted (file name, file sha256) pairs, so the same head stored twice lands in
the same place and a path never names two different heads.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from personalize.db.heads import HeadStore
from personalize.db.records import HeadVersionRecord
from personalize.heads import check_artifact_files, load_head
from personalize.models import BaseModel

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_sha256(file_digests: Mapping[str, str]) -> str:
    """The identity of a head folder: sha256 over its sorted (name, file sha256) pairs."""
    lines = "\n".join(f"{name}\0{file_digests[name]}" for name in sorted(file_digests))
    return hashlib.sha256(lines.encode()).hexdigest()


def relative_path(sha: str) -> str:
    return f"{sha[:2]}/{sha}"


def staging_dir(root: Path) -> Path:
    """A fresh private folder on the artifact root's file system (so the final move is atomic)."""
    path = root / ".staging" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def place(staging: Path, root: Path, sha: str) -> str:
    """Move a complete staging folder to its content address (or drop it if already there)."""
    target = root / relative_path(sha)
    if target.is_dir():
        shutil.rmtree(staging)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staging, target)
        except OSError:  # another writer placed the same content first
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    return relative_path(sha)


def remove_artifact(root: Path, relative: str) -> None:
    """Delete a stored head folder (only ever one inside ``root``)."""
    base = root.resolve()
    target = (root / relative).resolve()
    if target.is_relative_to(base) and target != base and target.is_dir():
        shutil.rmtree(target, ignore_errors=True)


@dataclass(frozen=True)
class RegisteredHead:
    record: HeadVersionRecord
    path: Path


def register_head_directory(
    heads: HeadStore,
    directory: Path,
    *,
    artifact_root: Path,
    base: BaseModel | None = None,
    created_by: str | None = None,
    activate: bool = True,
) -> RegisteredHead:
    """Copy a head folder into the artifact root and record it (what `POST /v1/objectives` does,
    for local folders: the CLI and the demo). With ``base``, the head is checked against it."""
    directory = Path(directory)
    check_artifact_files(directory)
    head = load_head(directory, base)
    files = sorted(p for p in directory.iterdir() if p.is_file())
    sha = content_sha256({p.name: file_sha256(p) for p in files})
    staging = staging_dir(artifact_root)
    try:
        for path in files:
            shutil.copyfile(path, staging / path.name)
        relative = place(staging, artifact_root, sha)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = heads.add_version(
        head.meta.to_json(),
        sha256=sha,
        artifact_path=relative,
        size_bytes=sum(p.stat().st_size for p in files),
        created_by=created_by,
        activate=activate,
    )
    return RegisteredHead(record, artifact_root / relative)
