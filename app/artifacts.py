"""Uploaded head artifacts: checked, hashed and stored by content.

An upload is a set of files (``head.json``, ``*.safetensors``, optionally
``adapter_config.json``/``README.md``). Names must be plain file names from the
head format's allow-list; pickle-capable files are refused by name before a
byte is written. The files are written to a private staging folder, loaded
with :func:`personalize.heads.load_head` against the serving base model
(backbone, tokenizer and shapes), then moved to ``<root>/<sha[:2]>/<sha>`` where
``sha`` is the sha256 over the sorted (name, content) pairs: the same head
uploaded twice lands in the same place.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.errors import APIError
from personalize.db.artifacts import CHUNK, content_sha256, place, staging_dir
from personalize.errors import RewardError
from personalize.heads import ALLOWED_FILES, HEAD_JSON, UNSAFE_SUFFIXES, ValueHead, load_head
from personalize.models import BaseModel
from personalize.rewards.hf import check_reward_location

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Upload:
    name: str
    stream: BinaryIO


@dataclass(frozen=True)
class StoredHead:
    head: ValueHead
    sha256: str
    relative_path: str
    size_bytes: int


def _bad(message: str, code: str = "invalid_upload", status: int = 422) -> APIError:
    return APIError(status, message, param="files", code=code)


def check_file_name(name: str) -> str:
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise _bad(f"path-like file name {name!r} refused: send plain file names such as {HEAD_JSON!r}")
    if Path(name).suffix.lower() in UNSAFE_SUFFIXES:
        raise _bad(
            f"{name!r} is a pickle-capable format and is never accepted; heads are safetensors + JSON",
            code="unsafe_artifact",
        )
    if not FILE_NAME.match(name) or name not in ALLOWED_FILES:
        raise _bad(f"unexpected file {name!r}; allowed: {', '.join(sorted(ALLOWED_FILES))}")
    return name


def check_names(uploads: Sequence[Upload]) -> None:
    names = [check_file_name(u.name) for u in uploads]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _bad(f"file(s) sent twice: {', '.join(duplicates)}")
    if HEAD_JSON not in names:
        raise _bad(f"the upload has no {HEAD_JSON}; a head needs {HEAD_JSON} and its safetensors")
    if not any(n.endswith(".safetensors") for n in names):
        raise _bad("the upload has no .safetensors file")


def store_upload(
    uploads: Sequence[Upload], *, root: Path, base: BaseModel, max_bytes: int, reward_root: Path
) -> StoredHead:
    """Validate and store an uploaded head; raises APIError or a HeadError subclass.

    A head whose ``reward`` is ``hf:<dir>`` must name a folder inside ``reward_root``."""
    check_names(uploads)
    staging = staging_dir(root)
    try:
        total = 0
        digests: dict[str, str] = {}
        for upload in uploads:
            digest = hashlib.sha256()
            with (staging / upload.name).open("wb") as out:
                while chunk := upload.stream.read(CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise _bad(f"upload exceeds the {max_bytes} byte limit", code="too_large", status=413)
                    digest.update(chunk)
                    out.write(chunk)
            digests[upload.name] = digest.hexdigest()
        head = load_head(staging, base)
        try:
            check_reward_location(head.meta.reward, reward_root)
        except RewardError as exc:
            raise APIError(422, str(exc), param="files", code="reward_outside_root") from exc
        sha = content_sha256(digests)
        return StoredHead(head, sha, place(staging, root, sha), total)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
