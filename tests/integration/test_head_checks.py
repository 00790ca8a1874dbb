"""Uploaded heads are checked before anything is allocated from them, and may not point rewards off the reward root."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from personalize.heads import ADAPTER_FILE, HEAD_JSON, VALUE_FILE
from tests.integration.conftest import Service
from tests.integration.helpers import head_files

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("backend", ["sqlite"], indirect=True)]


def _edit_json(folder: Path, **changes: Any) -> Path:
    meta = json.loads((folder / HEAD_JSON).read_text())
    meta.update(changes)
    (folder / HEAD_JSON).write_text(json.dumps(meta))
    return folder


def _edit_tensors(folder: Path, file: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    tensors = load_file(str(folder / file))
    edit(tensors)
    save_file(tensors, str(folder / file))
    return folder


def _upload(service: Service, folder: Path) -> Any:
    return service.client.post("/v1/objectives", files=head_files(folder), headers=service.auth())


def _poison(tensors: dict[str, torch.Tensor]) -> None:
    tensors["up.weight"][0, 0] = float("nan")


def _as_int(tensors: dict[str, torch.Tensor]) -> None:
    tensors["bias"] = tensors["bias"].to(torch.int32)


def _wrong_rank(tensors: dict[str, torch.Tensor]) -> None:
    name = next(k for k in tensors if k.endswith(".lora_A.weight"))
    tensors[name] = torch.zeros(3, tensors[name].shape[1])


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "huge hidden size": (lambda d: _edit_json(d, hidden_size=1_000_000_000), "hidden_size"),
    "other hidden size": (lambda d: _edit_json(d, hidden_size=32), "backbone hidden size"),
    "huge value rank": (lambda d: _edit_json(d, value_rank=100_000), "value_rank"),
    "huge lora rank": (
        lambda d: _edit_json(d, lora={"rank": 100_000, "alpha": 16.0, "target_modules": ["q_proj"]}),
        "lora.rank",
    ),
    "value rank not the file's": (lambda d: _edit_json(d, value_rank=8), "do not match"),
    "NaN weights": (lambda d: _edit_tensors(d, VALUE_FILE, _poison), "NaN"),
    "integer weights": (lambda d: _edit_tensors(d, VALUE_FILE, _as_int), "I32"),
    "adapter of another rank": (lambda d: _edit_tensors(d, ADAPTER_FILE, _wrong_rank), "not rank"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_malformed_head_is_refused_before_allocation(
    service: Service, tiny_head_dir: Callable[..., Path], case: str
) -> None:
    corrupt, words = CASES[case]
    response = _upload(service, corrupt(tiny_head_dir("concise", seed=1)))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "file" and words in error["message"], error
    assert service.client.get("/v1/objectives", headers=service.auth()).json()["data"] == []


def test_a_head_reward_must_live_under_the_reward_root(
    start_service: Callable[..., Service], tiny_head_dir: Callable[..., Path], tmp_path: Path
) -> None:
    root = tmp_path / "reward-models"
    service = start_service(reward_root=root)
    for outside in ("hf:/etc", f"hf:{root}/../elsewhere", "hf:relative/dir"):
        refused = _upload(service, tiny_head_dir("concise", seed=1, reward=outside))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "reward_outside_root" and str(root) in refused.text
    inside = _upload(service, tiny_head_dir("concise", seed=1, reward=f"hf:{root}/my-model"))
    assert inside.status_code == 201, inside.text
    scored = service.client.post("/v1/rewards/score", json={"prompt": "q", "responses": ["a"]}, headers=service.auth())
    assert scored.status_code == 422 and "not a directory" in scored.json()["error"]["message"]
