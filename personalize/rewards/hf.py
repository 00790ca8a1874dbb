"""``hf:<dir>``: a local Hugging Face sequence-classification reward model.

The directory must hold safetensors weights: a directory with a pickle-based weight
file (``pytorch_model.bin``, ``*.pt``, ``*.ckpt``, ...) is refused, because loading
one can execute code. Nothing is downloaded and no remote code is run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from personalize.errors import ConfigError, RewardError
from personalize.rewards.base import UNBOUNDED, as_scores, check_batch

logger = logging.getLogger(__name__)

HF_PREFIX = "hf:"
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".h5", ".msgpack")


def check_model_dir(path: Path) -> None:
    """Raise RewardError unless ``path`` is a directory with safetensors weights only."""
    if not path.is_dir():
        raise RewardError(f"hf reward: {str(path)!r} is not a directory; pass hf:<local model dir>")
    unsafe = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in UNSAFE_SUFFIXES)
    if unsafe:
        raise RewardError(
            f"hf reward: {path} holds non-safetensors weight files {unsafe}; they can run code "
            "when loaded. Convert the model to safetensors (model.save_pretrained(dir, "
            "safe_serialization=True)) and remove them"
        )
    if not any(path.glob("*.safetensors")):
        raise RewardError(f"hf reward: {path} has no *.safetensors weights")


def check_reward_location(name: str, root: Path) -> None:
    """Refuse an ``hf:<dir>`` reward whose folder is not inside ``root`` (links and '..' resolved).

    What a service checks before it builds a reward that an uploaded head names: a head
    may not make the server read a model from anywhere else on its disk. Other names
    (registered rewards) are not paths and pass."""
    if not isinstance(name, str) or not name.startswith(HF_PREFIX):
        return
    path = Path(name[len(HF_PREFIX) :]).expanduser()
    resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not resolved.is_relative_to(Path(root).resolve()):
        raise RewardError(
            f"reward {name!r} names a folder outside the reward root {str(root)!r}; "
            f"put the reward model under it and name it {HF_PREFIX}{Path(root) / '<model dir>'}"
        )


class HFReward:
    """Score of a local sequence-classification reward model on the (prompt, response) pair.
    Range unbounded (the model's raw logit), higher = better by that model.

    The pair is encoded with the model's chat template (user = prompt, assistant =
    response) when the tokenizer has one, else as a text pair (``tokenizer(prompt,
    response)``), truncated to ``max_length`` tokens. The score is ``logits[:, 0]`` (the
    single output of a one-label reward model). Deterministic: the model runs in eval
    mode under ``torch.inference_mode``.
    """

    value_range = UNBOUNDED

    def __init__(
        self,
        path: str | Path,
        device: str | None = None,
        batch_size: int = 8,
        max_length: int = 512,
        use_chat_template: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"hf reward: batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ConfigError(f"hf reward: max_length must be >= 2, got {max_length}")
        self.path = Path(path).expanduser()
        check_model_dir(self.path)
        self.name = f"{HF_PREFIX}{path}"
        self.description = f"sequence-classification reward model at {self.path} (logit 0)"
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._batch_size = batch_size
        self._max_length = max_length
        self._model, self._tokenizer = self._load()
        has_template = bool(getattr(self._tokenizer, "chat_template", None))
        self._chat = has_template if use_chat_template is None else use_chat_template
        if self._chat and not has_template:
            raise ConfigError(f"hf reward: use_chat_template=True but {self.path} has no chat template")

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        logger.info("loading reward model from %s", self.path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, local_files_only=True, use_safetensors=True, trust_remote_code=False
            )
        except (OSError, ValueError, KeyError) as exc:
            raise RewardError(f"hf reward: cannot load {self.path}: {exc}") from exc
        if tokenizer.pad_token is None:
            # Batched scoring needs padding; the classifier pools at the last non-pad token.
            if tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token
            elif tokenizer.unk_token is not None:
                tokenizer.pad_token = tokenizer.unk_token
        if tokenizer.pad_token is None:
            self._batch_size = 1  # no token to pad with: score one pair at a time
        else:
            model.config.pad_token_id = tokenizer.pad_token_id
        # Never feed more positions than the model has (absolute position embeddings crash).
        limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
        self._max_length = min([self._max_length, *(n for n in limits if isinstance(n, int) and n > 1)])
        return model.to(self._device).eval(), tokenizer

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(self.name, prompts, responses)
        chunks = [
            self._score(prompts[i : i + self._batch_size], responses[i : i + self._batch_size])
            for i in range(0, len(responses), self._batch_size)
        ]
        scores = torch.cat(chunks) if chunks else torch.zeros(0)
        return as_scores(self.name, scores, len(responses))

    def _encode(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        options: dict[str, Any] = {
            "padding": True,
            "truncation": True,
            "max_length": self._max_length,
            "return_tensors": "pt",
        }
        if not self._chat:
            return self._tokenizer(list(prompts), list(responses), **options)
        texts = [
            self._tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p, r in zip(prompts, responses, strict=True)
        ]
        return self._tokenizer(texts, add_special_tokens=False, **options)

    def _score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        batch = self._encode(prompts, responses)
        if batch["input_ids"].shape[1] == 0:  # all texts empty and no special tokens added
            pad = self._tokenizer.pad_token_id or 0
            batch["input_ids"] = torch.full((len(responses), 1), pad, dtype=torch.long)
            batch["attention_mask"] = torch.ones(len(responses), 1, dtype=torch.long)
        batch = batch.to(self._device)
        with torch.inference_mode():
            logits = self._model(**batch).logits  # (B, labels)
        return logits[:, 0].float().cpu()  # (B,)
