"""The evaluation harness on the tiny model with simple, transparent rewards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from personalize.decoding import Engine
from personalize.decoding.config import AISPParams, IVGParams
from personalize.errors import ConfigError
from personalize.evaluation import EvalConfig, Evaluator, RunCache, Stat, markdown_table
from personalize.heads import load_head
from personalize.models import BaseModel
from personalize.plots import plot_report, plot_reward_vs_compute


def length_reward(prompts, responses):
    return torch.tensor([-len(r) / 100.0 for r in responses])


def vowel_reward(prompts, responses):
    return torch.tensor([sum(c in "aeiou" for c in r) / max(len(r), 1) for r in responses])


def test_stat_interval() -> None:
    s = Stat.of([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and abs(s.ci95 - 1.96 * (5 / 3) ** 0.5 / 2) < 1e-9
    assert Stat.of([2.0]).ci95 == 0.0


def test_evaluator_rows_bon_monotone_and_outputs(fresh_tiny_base: BaseModel, tiny_head_dir, tmp_path: Path) -> None:
    base = fresh_tiny_base
    heads = [
        load_head(tiny_head_dir("short", kind="linear", seed=1), base),
        load_head(tiny_head_dir("vowels", kind="lora", seed=2), base),
        load_head(tiny_head_dir("vowels-sft", kind="implicit", seed=3), base),
    ]
    config = EvalConfig(
        objectives=("short", "vowels"),
        betas=(1.0, 4.0),
        bon_sizes=(1, 2, 4),
        sweeps=(("short", "vowels"), ("vowels", "short")),
        sweep_steps=3,
        max_new_tokens=8,
        batch_size=4,
        latency_prompts=2,
        ivg=IVGParams(candidates=2, chunk_tokens=4, beams=2),
        implicit={"vowels": "vowels-sft"},
        aisp_samples=(1, 2),
        aisp=AISPParams(sigma=0.5, lam=0.1, iterations=2),
    )
    prompts = [
        "How do I clean my keyboard?",
        "Explain photosynthesis.",
        "I love sunny days",
        "Water boils at",
        "Be concise",
        "Thank you so much",
    ]
    seen: list[str] = []
    report = Evaluator(
        Engine(base, heads), {"short": length_reward, "vowels": vowel_reward}, prompts, config, progress=seen.append
    ).run()
    labels = [r.label for r in report.rows]
    assert labels[0] == "base" and "vas short=1 beta=4" in labels and "bon N=4 (vowels)" in labels
    assert len(report.sweep) == 6 and report.sweep[0].weights == {"short": 1.0, "vowels": 0.0}
    there, back = report.sweep_rows(("short", "vowels")), report.sweep_rows(("vowels", "short"))
    assert [r.weights["vowels"] for r in there] == [0.0, 0.5, 1.0]
    assert [r.weights["short"] for r in back] == [0.0, 0.5, 1.0]
    # the same weight vector gives the same rows whichever sweep it is in
    assert there[1].rewards == back[1].rewards and there[0].samples == back[2].samples
    for objective in ("short", "vowels"):  # Best-of-N over nested sample sets can only improve its own reward
        means = [
            next(r for r in report.rows if r.label == f"bon N={n} ({objective})").rewards[objective].mean
            for n in (1, 2, 4)
        ]
        assert means[0] <= means[1] <= means[2]
    bon4 = next(r for r in report.rows if r.label == "bon N=4 (short)")
    base_flops = report.rows[0].flops_per_response
    assert 1.5 * base_flops < bon4.flops_per_response < 4 * base_flops  # N samples sharing one prompt prefill
    assert report.rows[0].latency_s is not None and bon4.latency_s is not None
    ivg = {r.objective: r for r in report.rows if r.method == "ivg"}
    assert set(ivg) == {"short", "vowels"} and ivg["vowels"].weights == {"vowels": 1.0, "vowels-sft": 1.0}
    assert ivg["short"].samples_per_response == 4 + 4  # B·C at start + one chunk boundary (4 of 8 tokens)
    assert ivg["short"].flops_per_response > report.rows[0].flops_per_response  # 4 sequences, one shared prefill
    aisp = [r for r in report.rows if r.method == "aisp" and r.objective == "short"]
    assert [r.samples_per_response for r in aisp] == [2.0, 4.0]  # N x I
    assert aisp[0].forwards_per_response > report.rows[0].forwards_per_response  # two rounds one after the other
    assert aisp[0].latency_s is not None and ivg["vowels"].latency_s is None  # latency for the first objective only
    assert any("latency" in s for s in seen)
    # paired gains: the mean of per-prompt differences is the difference of the means; none for base and sweeps
    assert report.rows[0].gain is None and all(r.gain is None for r in report.sweep)
    for row in report.rows[1:]:
        assert row.gain is not None, row.label
        expected = row.rewards[row.objective].mean - report.rows[0].rewards[row.objective].mean
        assert row.gain.mean == pytest.approx(expected, abs=1e-9)
    # per-prompt rewards: one per prompt and objective, and the row's mean is their mean
    for row in [*report.rows, *report.sweep]:
        assert set(row.prompt_scores) == {"short", "vowels"}, row.label
        for objective, values in row.prompt_scores.items():
            assert len(values) == len(prompts)
            assert sum(values) / len(values) == pytest.approx(row.rewards[objective].mean, abs=1e-9)
    table = markdown_table(report)
    assert table.count("\n") == 2 + len(report.rows) + len(report.sweep)
    bon4_line = next(line for line in table.splitlines() if line.startswith("| bon N=4 (short) |"))
    assert f"{bon4.gain.mean:+.3f} ± {bon4.gain.ci95:.3f}" in bon4_line
    out = plot_report(report, tmp_path / "eval.png")
    assert out.stat().st_size > 10_000
    assert plot_reward_vs_compute(report, tmp_path / "compute.png").stat().st_size > 10_000
    stored = json.loads(json.dumps(report.to_json()))
    assert stored["prompts"] == len(prompts)
    assert stored["rows"][0]["prompt_scores"]["short"] == pytest.approx(report.rows[0].prompt_scores["short"], abs=1e-6)


def test_run_cache_reuses_runs_and_decodes_only_new_ones(
    fresh_tiny_base: BaseModel, tiny_head_dir, tmp_path: Path
) -> None:
    base = fresh_tiny_base
    heads = [
        load_head(tiny_head_dir("short", kind="linear", seed=1), base),
        load_head(tiny_head_dir("vowels", kind="lora", seed=2), base),
    ]
    engine = Engine(base, heads)
    prompts = ["How do I clean my keyboard?", "Explain photosynthesis.", "I love sunny days"]
    common = dict(betas=(2.0,), bon_sizes=(1, 2), sweeps=(), max_new_tokens=6, batch_size=2, ivg=None, aisp_samples=())
    rewards = {"short": length_reward, "vowels": vowel_reward}
    cache = RunCache(tmp_path / "cache")
    first = Evaluator(
        engine,
        {"short": length_reward},
        prompts,
        EvalConfig(objectives=("short",), latency_prompts=1, **common),
        cache=cache,
    ).run()
    stored = len(list((tmp_path / "cache").glob("*.json")))
    assert stored > 0 and cache.hits == 0

    decoded: list[object] = []
    real_generate = engine.generate

    def counting_generate(requests, reward=None):
        decoded.append(requests[0].personalization)
        return real_generate(requests, reward=reward)

    engine.generate = counting_generate  # type: ignore[method-assign]
    again = Evaluator(
        engine,
        {"short": length_reward},
        prompts,
        EvalConfig(objectives=("short",), latency_prompts=1, **common),
        cache=RunCache(tmp_path / "cache"),
    ).run()
    assert decoded == []  # everything came from the cache, identical to the first run
    assert [r.rewards["short"] for r in again.rows] == [r.rewards["short"] for r in first.rows]
    assert [r.latency_s for r in again.rows] == [r.latency_s for r in first.rows]
    assert [r.samples for r in again.rows] == [r.samples for r in first.rows]

    wider = Evaluator(
        engine,
        rewards,
        prompts,
        EvalConfig(objectives=("short", "vowels"), latency_prompts=0, **common),
        cache=RunCache(tmp_path / "cache"),
    ).run()
    # Only the new objective's vas row was decoded (batches of 2 over 3 prompts: two generate calls).
    assert [dict(p.weights) for p in decoded] == [{"vowels": 1.0}] * 2  # type: ignore[attr-defined]
    assert "vowels" in wider.rows[0].rewards  # stored base texts scored with the new reward too
    assert wider.rows[0].rewards["short"] == first.rows[0].rewards["short"]

    no_bon = Evaluator(
        engine,
        rewards,
        prompts,
        EvalConfig(objectives=("short", "vowels"), latency_prompts=0, **{**common, "bon_sizes": ()}),
        cache=RunCache(tmp_path / "cache"),
    ).run()
    assert [r.label for r in no_bon.rows] == [r.label for r in wider.rows if r.method != "bon"]

    (tmp_path / "cache" / "garbage.json").write_text("{not json")
    assert RunCache(tmp_path / "cache").get("garbage") is None  # a file cut off mid-write is decoded again


def test_sweeps_must_pair_two_evaluated_objectives() -> None:
    with pytest.raises(ConfigError, match="must be among"):
        EvalConfig(objectives=("short", "vowels"), sweeps=(("short", "helpful"),))
    with pytest.raises(ConfigError, match="two different objectives"):
        EvalConfig(objectives=("short", "vowels"), sweeps=(("short", "short"),))
    assert EvalConfig(objectives=("short",), sweeps=()).sweeps == ()
    with pytest.raises(ConfigError, match="Best-of-N sizes"):
        EvalConfig(objectives=("short",), bon_sizes=(0, 4), sweeps=())
