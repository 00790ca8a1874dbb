"""The ivg and aisp parameters of a request (accepted, applied, echoed, refused) and the `compute` it reports."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from personalize.decoding.config import AISPParams, IVGParams
from tests.integration.conftest import Service
from tests.integration.helpers import chat, sse_events

pytestmark = pytest.mark.integration

IVG_DEFAULTS = asdict(IVGParams())  # what an omitted field takes
AISP_DEFAULTS = asdict(AISPParams())
COMPUTE_FIELDS = {"forwards", "forward_rows", "processed_tokens", "flops", "samples"}
UPSTREAM_FIELDS = {"upstream_calls", "upstream_tokens", "accepted_tokens"}


def test_ivg_params_are_applied_echoed_and_change_the_search(rewarded: Service) -> None:
    def run(ivg: dict[str, Any]) -> dict[str, Any]:
        personalization = {"method": "ivg", "weights": {"brevity": 1.0}, "ivg": ivg}
        response = chat(rewarded, max_tokens=6, seed=3, personalization=personalization)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    wide = run({"candidates": 3, "chunk_tokens": 2, "beams": 2, "implicit_weight": 0.5})
    assert wide["personalization"]["ivg"] == {"candidates": 3, "chunk_tokens": 2, "beams": 2, "implicit_weight": 0.5}
    assert "aisp" not in wide["personalization"]
    narrow = run({"candidates": 1, "beams": 1})
    assert narrow["personalization"]["ivg"] == {**IVG_DEFAULTS, "candidates": 1, "beams": 1}
    assert narrow["compute"]["samples"] < wide["compute"]["samples"]  # 1 x 1 candidate chunks against 2 x 3


def test_method_params_default_when_omitted(rewarded: Service) -> None:
    ivg = chat(rewarded, max_tokens=4, seed=1, personalization={"method": "ivg", "weights": {"brevity": 1.0}})
    assert ivg.status_code == 200, ivg.text
    assert ivg.json()["personalization"]["ivg"] == IVG_DEFAULTS
    aisp = chat(
        rewarded, max_tokens=4, seed=1, personalization={"method": "aisp", "weights": {"brevity": 1.0}, "aisp": {}}
    )
    assert aisp.status_code == 200, aisp.text
    assert aisp.json()["personalization"]["aisp"] == AISP_DEFAULTS
    assert aisp.json()["compute"]["samples"] == AISP_DEFAULTS["samples"] * AISP_DEFAULTS["iterations"]


def test_aisp_params_are_applied_and_echoed(rewarded: Service) -> None:
    params = {"sigma": 1.5, "lam": 0.5, "samples": 3, "iterations": 2}
    response = chat(
        rewarded, max_tokens=4, seed=5, personalization={"method": "aisp", "weights": {"brevity": 1.0}, "aisp": params}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["personalization"]["aisp"] == params and "ivg" not in body["personalization"]
    assert body["compute"]["samples"] == 3 * 2


def test_params_may_follow_the_profiles_method(rewarded: Service) -> None:
    user_id, key = rewarded.create_user()
    put = rewarded.client.put(
        f"/v1/users/{user_id}/profile", json={"method": "ivg", "weights": {"brevity": 1.0}}, headers=rewarded.auth(key)
    )
    assert put.status_code == 200, put.text
    response = chat(rewarded, key, max_tokens=4, seed=2, personalization={"ivg": {"beams": 1, "candidates": 1}})
    assert response.status_code == 200, response.text
    assert response.json()["personalization"]["ivg"] == {**IVG_DEFAULTS, "beams": 1, "candidates": 1}


@pytest.mark.parametrize(
    ("personalization", "param", "says"),
    [
        ({"method": "ivg", "ivg": {"beams": 99}}, "personalization.ivg.beams", "[1, 16]"),
        ({"method": "ivg", "ivg": {"candidates": 0}}, "personalization.ivg.candidates", "[1, 16]"),
        ({"method": "ivg", "ivg": {"chunk_tokens": 5000}}, "personalization.ivg.chunk_tokens", "[1, 1024]"),
        ({"method": "ivg", "ivg": {"implicit_weight": 9.5}}, "personalization.ivg.implicit_weight", "[-5.0, 5.0]"),
        ({"method": "ivg", "ivg": {"beams": 1.5}}, "personalization.ivg.beams", "integer"),
        ({"method": "ivg", "ivg": {"width": 3}}, "personalization.ivg.width", "Extra inputs"),
        ({"method": "aisp", "aisp": {"sigma": -0.1}}, "personalization.aisp.sigma", "[0.0, 10.0]"),
        ({"method": "aisp", "aisp": {"lam": 0}}, "personalization.aisp.lam", "[0.001, 100.0]"),
        ({"method": "aisp", "aisp": {"samples": 65}}, "personalization.aisp.samples", "[1, 64]"),
        ({"method": "aisp", "aisp": {"iterations": 0}}, "personalization.aisp.iterations", "[1, 16]"),
        ({"method": "vas", "ivg": {"beams": 1}}, "personalization.ivg", "method 'ivg'"),
        ({"method": "ivg", "aisp": {}}, "personalization.aisp", "method 'aisp'"),
        ({"ivg": {}}, "personalization.ivg", "method is 'vas'"),  # the profile's method
        ({"method": "ivg", "ivg": {"beams": 16, "candidates": 16}}, "personalization.ivg", "at most 64"),
        ({"method": "aisp", "aisp": {"samples": 64, "iterations": 16}}, "personalization.aisp", "at most 256"),
    ],
)
def test_bad_method_params_are_422_naming_the_field_and_range(
    rewarded: Service, personalization: dict[str, Any], param: str, says: str
) -> None:
    response = chat(rewarded, max_tokens=4, personalization={"weights": {"brevity": 1.0}, **personalization})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert says in error["message"], error["message"]


def test_compute_is_reported_without_streaming(rewarded: Service) -> None:
    response = chat(rewarded, max_tokens=5, seed=4, personalization={"weights": {"brevity": 1.0}})
    assert response.status_code == 200, response.text
    body = response.json()
    compute = body["compute"]
    assert set(compute) == COMPUTE_FIELDS | UPSTREAM_FIELDS and compute["samples"] == 1
    assert all(compute[field] == 0 for field in UPSTREAM_FIELDS)  # the base model runs here
    usage = body["usage"]
    # one forward per sampled token (an end-of-sequence token is not in usage); the LoRA head adds a row
    assert compute["forwards"] - usage["completion_tokens"] in (0, 1)
    assert compute["forward_rows"] == 2 * compute["forwards"]
    assert compute["processed_tokens"] >= 2 * (usage["prompt_tokens"] + usage["completion_tokens"])
    assert compute["flops"] > 0


def test_best_of_n_compute_counts_every_sample(rewarded: Service) -> None:
    response = chat(
        rewarded, max_tokens=4, seed=4, personalization={"method": "bon", "best_of": 3, "weights": {"brevity": 1.0}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["compute"]["samples"] == 3


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_the_final_streamed_chunk_reports_compute(rewarded: Service, path: str) -> None:
    body: dict[str, Any] = {
        "model": "default",
        "max_tokens": 5,
        "seed": 6,
        "personalization": {"weights": {"brevity": 1.0}},
    }
    if path == "/v1/completions":
        body["prompt"] = "The quick brown fox"
    else:
        body["messages"] = [{"role": "user", "content": "Hello"}]
    whole = rewarded.client.post(path, json=body, headers=rewarded.auth())
    assert whole.status_code == 200, whole.text
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with rewarded.client.stream("POST", path, json=stream, headers=rewarded.auth()) as response:
        assert response.status_code == 200
        chunks = [e for e in sse_events(response.read().decode()) if e != "[DONE]"]
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0]["compute"] == whole.json()["compute"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["compute"] == whole.json()["compute"]
    assert all("compute" not in c for c in chunks if c is not finishing[0] and c is not chunks[-1])
