"""Head files: round trips, safety and compatibility checks, peft interoperability."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from personalize.decoding import Engine
from personalize.errors import BackboneMismatchError, HeadFormatError, TokenizerMismatchError, UnsafeArtifactError
from personalize.heads import load_head, new_head, save_head
from personalize.lora import LoraSpec
from personalize.models import BaseModel, from_pretrained_objects
from tests.conftest import randomize_head
from tests.tiny import build_tiny_base, build_tiny_tokenizer


@pytest.mark.parametrize("kind", ["lora", "linear"])
def test_save_load_round_trips_bit_exactly(tiny_base: BaseModel, tmp_path: Path, kind: str) -> None:
    head = randomize_head(new_head(tiny_base, "concise", kind=kind, description="short answers"), seed=4)  # type: ignore[arg-type]
    loaded = load_head(save_head(head, tmp_path / "h"), tiny_base)
    assert loaded.meta == head.meta
    for (k1, v1), (k2, v2) in zip(head.output.state_dict().items(), loaded.output.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    if kind == "lora":
        assert head.adapter is not None and loaded.adapter is not None
        assert head.adapter.keys() == loaded.adapter.keys()
        assert all(torch.equal(head.adapter[k], loaded.adapter[k]) for k in head.adapter)
    else:
        assert loaded.adapter is None


@pytest.mark.parametrize("name", ["weights.bin", "model.pt", "evil.pkl", "adapter.ckpt", "x.joblib"])
def test_pickle_files_are_refused(tiny_base: BaseModel, tmp_path: Path, name: str) -> None:
    folder = save_head(new_head(tiny_base, "concise"), tmp_path / "h")
    (folder / name).write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeArtifactError, match="pickle"):
        load_head(folder, tiny_base)


def test_unexpected_files_and_symlinks_are_refused(tiny_base: BaseModel, tmp_path: Path) -> None:
    folder = save_head(new_head(tiny_base, "concise"), tmp_path / "h")
    (folder / "notes.txt").write_text("hi")
    with pytest.raises(HeadFormatError, match="unexpected file"):
        load_head(folder, tiny_base)
    (folder / "notes.txt").unlink()
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (folder / "README.md").symlink_to(outside)
    with pytest.raises(UnsafeArtifactError, match="regular file"):
        load_head(folder, tiny_base)


def test_wrong_backbone_is_refused(tiny_base: BaseModel, tmp_path: Path) -> None:
    other = build_tiny_base(backbone_id="another-model")
    folder = save_head(new_head(other, "concise"), tmp_path / "h")
    with pytest.raises(BackboneMismatchError, match="another-model"):
        load_head(folder, tiny_base)


def test_wrong_tokenizer_is_refused(tiny_base: BaseModel, tmp_path: Path) -> None:
    tokenizer = build_tiny_tokenizer(vocab_size=400)
    other = from_pretrained_objects(tiny_base.model, tokenizer, backbone_id=tiny_base.backbone_id)
    folder = save_head(new_head(other, "concise"), tmp_path / "h")
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        load_head(folder, tiny_base)


def test_tokenizer_eos_follows_the_generation_config(tiny_base: BaseModel, tmp_path: Path) -> None:
    # A conversion that names another special token as EOS (transformers 5.17 reads the embedded GGUF's
    # EOS as <|im_start|>) gives the same EOS, stop tokens and fingerprint as one that names <|im_end|>.
    tokenizer = build_tiny_tokenizer()
    tokenizer.eos_token = "<|im_start|>"
    other = from_pretrained_objects(tiny_base.model, tokenizer, backbone_id=tiny_base.backbone_id)
    assert other.tokenizer.eos_token == "<|im_end|>" and other.eos_token_ids == tiny_base.eos_token_ids
    assert other.tokenizer_hash == tiny_base.tokenizer_hash
    load_head(save_head(new_head(other, "concise"), tmp_path / "h"), tiny_base)  # accepted


def test_the_primary_end_token_is_the_generation_configs_first(tiny_base: BaseModel) -> None:
    model = copy.deepcopy(tiny_base.model)
    end, start = tiny_base.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    model.generation_config.eos_token_id = [end, start] if end > start else [start, end]  # the larger id first
    other = from_pretrained_objects(model, build_tiny_tokenizer(), backbone_id=tiny_base.backbone_id)
    first = model.generation_config.eos_token_id[0]
    assert other.eos_token_ids[0] == first and set(other.eos_token_ids) == {end, start}


def test_malformed_files_give_clear_errors(tiny_base: BaseModel, tmp_path: Path) -> None:
    folder = save_head(new_head(tiny_base, "concise"), tmp_path / "h")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "value_head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(HeadFormatError, match="safetensors"):
        load_head(broken, tiny_base)
    meta = json.loads((folder / "head.json").read_text())
    meta["objective"] = "../etc"
    (folder / "head.json").write_text(json.dumps(meta))
    with pytest.raises(HeadFormatError, match="objective name"):
        load_head(folder, tiny_base)
    with pytest.raises(HeadFormatError, match="does not exist"):
        load_head(tmp_path / "missing", tiny_base)


def test_adapter_rows_match_peft(tmp_path: Path) -> None:
    """The runner's per-row LoRA (stacked, masked per token) equals peft's own forward for the same
    saved adapter, and the base row beside it equals the plain model."""
    peft = pytest.importorskip("peft")
    base = build_tiny_base()
    head = randomize_head(new_head(base, "concise", lora=LoraSpec(4, 8.0, ("q_proj", "v_proj", "o_proj"))), seed=6)
    folder = save_head(head, tmp_path / "h")
    prompt = base.encode_prompt("How do I clean my keyboard?")
    ids = torch.tensor([prompt])
    reference = build_tiny_base()
    peft_model = peft.PeftModel.from_pretrained(reference.model, str(folder))
    with torch.inference_mode():
        want = peft_model(ids).logits[0, -1]
        plain = base.model(ids).logits[0, -1]
    engine = Engine(base, [load_head(folder, base)])
    runner = engine.runner
    cache = runner.new_cache(engine.heads)
    cache.append([0, engine.heads.lora_slot["concise"]])  # one sequence: its base row and its adapter row
    with torch.inference_mode():
        hidden = runner.forward(cache, ids[0], [len(prompt)], runner.adapters(engine.heads, [1]))  # (2, H)
        got = runner.logits(hidden)
    assert torch.allclose(got[1], want, atol=1e-5)  # adapter row == peft
    assert torch.allclose(got[0], plain, atol=1e-5)  # base row == no adapter
    assert not torch.allclose(want, plain, atol=1e-3)  # and the adapter really changes something


def test_commands_read_the_weights_of_the_wanted_heads_only(
    tiny_base: BaseModel, tmp_path: Path, tiny_head_dir
) -> None:
    from personalize.commands.options import load_heads as _load_heads

    folder = tmp_path / "heads"
    for objective in ("harmless", "positive"):
        shutil.copytree(tiny_head_dir(objective), folder / objective)
    (folder / "positive" / "value_head.safetensors").write_bytes(b"not safetensors")
    loaded, missing = _load_heads(tiny_base, {"harmless", "concise"}, [folder], tmp_path / "data")
    assert [h.objective for h in loaded] == ["harmless"] and missing == ["concise"]
    with pytest.raises(HeadFormatError):  # a wanted head that is broken still says so
        _load_heads(tiny_base, {"positive"}, [folder], tmp_path / "data")
    (folder / "harmless" / "head.json").write_text("{")
    with pytest.raises(HeadFormatError, match="not valid JSON"):  # unreadable metadata: loaded to say why
        _load_heads(tiny_base, {"concise"}, [folder], tmp_path / "data")
