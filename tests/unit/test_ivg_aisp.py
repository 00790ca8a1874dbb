"""IVG (implicit token-level values + chunk-level search) and AISP (pre-logit importance sampling) on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.decoding.aisp import update_mean
from personalize.decoding.config import AISPParams, IVGParams
from personalize.decoding.rng import derive_seed, normals
from personalize.decoding.search import select_beams
from personalize.errors import ConfigError, HeadFormatError, RewardError
from personalize.heads import HeadMeta, load_head, new_head, save_head
from personalize.lora import LoraSpec
from personalize.models import BaseModel
from tests.conftest import randomize_head
from tests.tiny import build_tiny_base

PROMPTS = ["How do I clean my keyboard?", "Explain photosynthesis.", "I love sunny days"]


def req(
    base: BaseModel,
    prompt: str,
    weights: dict[str, float] | None = None,
    *,
    method: str = "ivg",
    beta: float = 2.0,
    seed: int = 0,
    n: int = 12,
    ivg: IVGParams | None = None,
    aisp: AISPParams | None = None,
    **sampling: object,
) -> GenerationRequest:
    return GenerationRequest(
        tuple(base.encode_prompt(prompt)),
        SamplingParams(max_new_tokens=n, seed=seed, **sampling),  # type: ignore[arg-type]
        Personalization(weights or {}, beta=beta, method=method, ivg=ivg or IVGParams(), aisp=aisp or AISPParams()),
    )


def longest(prompts: list[str], responses: list[str]) -> torch.Tensor:
    return torch.tensor([float(len(r)) for r in responses])


@pytest.fixture()
def engine(fresh_tiny_base: BaseModel, tiny_head_dir) -> Engine:
    base = fresh_tiny_base
    heads = [
        load_head(tiny_head_dir("concise", kind="lora", seed=1), base),
        load_head(tiny_head_dir("positive", kind="linear", seed=3), base),
        load_head(tiny_head_dir("tuned", kind="implicit", seed=4), base),
        new_head(base, "same", kind="implicit"),  # LoRA B = 0: the adapter IS the base model
    ]
    return Engine(base, heads)


# ---- implicit heads ------------------------------------------------------------------------------
def test_implicit_head_round_trips_without_value_output(tiny_base: BaseModel, tmp_path: Path) -> None:
    head = randomize_head(new_head(tiny_base, "tuned", kind="implicit"), seed=2)
    folder = save_head(head, tmp_path / "tuned")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "head.json"]
    loaded = load_head(folder, tiny_base)
    assert loaded.meta.kind == "implicit" and loaded.meta.value_rank == 0 and loaded.adapter is not None
    assert loaded.meta.calibration.scale == 1.0  # log-probability units
    assert all(float(p.abs().sum()) == 0.0 for p in loaded.output.parameters())
    with pytest.raises(HeadFormatError, match="'implicit' head needs a lora spec"):
        HeadMeta("x", "1", "implicit", "b", "t", 64, 0)
    with pytest.raises(HeadFormatError, match="value_rank 0"):
        HeadMeta("x", "1", "implicit", "b", "t", 64, 4, lora=LoraSpec(8, 16.0, ("q_proj",)))


def test_implicit_value_of_an_adapter_identical_to_base_is_exactly_zero(engine: Engine) -> None:
    base = engine.base
    plain = engine.next_token_scores([req(base, PROMPTS[0], method="base")])[0]
    for method in ("ivg", "vas"):
        same = req(base, PROMPTS[0], {"same": 3.0}, method=method, beta=5.0, ivg=IVGParams(1, 4, 1))
        assert torch.equal(engine.next_token_scores([same])[0], plain)
        events = list(engine.stream([same]))
        assert all(e.contributions == {"same": 0.0} for e in events)  # every push exactly zero
        for seed in range(3):
            a = engine.generate(
                [req(base, PROMPTS[1], {"same": 3.0}, method=method, seed=seed, ivg=IVGParams(1, 4, 1))]
            )
            b = engine.generate([req(base, PROMPTS[1], method="base", seed=seed)])
            assert a[0].token_ids == b[0].token_ids  # ivg reduces to base
            assert a[0].head_versions == {"same": "1"}
            assert a[0].forward_rows == 2 * b[0].forward_rows  # the adapter row was paid for


def test_implicit_head_at_unit_weight_samples_the_tuned_policy_over_top_k(engine: Engine, tiny_head_dir) -> None:
    """beta · w = 1: over the base top-k, scores = log pi_tuned + const (the adapter run by peft)."""
    peft = pytest.importorskip("peft")
    base = engine.base
    request = req(base, PROMPTS[2], {"tuned": 1.0}, beta=1.0, ivg=IVGParams(1, 4, 1))
    guided = engine.next_token_scores([request])[0]
    plain = engine.next_token_scores([req(base, PROMPTS[2], method="base")])[0]
    reference = build_tiny_base()
    folder = tiny_head_dir("tuned", kind="implicit", seed=4)
    tuned_model = peft.PeftModel.from_pretrained(reference.model, str(folder))
    with torch.inference_mode():
        tuned = torch.log_softmax(tuned_model(torch.tensor([request.prompt_ids])).logits[0, -1].float(), -1)
    top = plain.topk(20).indices
    got, want = guided[top] - guided[top].mean(), tuned[top] - tuned[top].mean()
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(plain[top] - plain[top].mean(), want, atol=1e-2)  # the adapter does change things
    outside = torch.ones_like(plain, dtype=torch.bool)
    outside[top] = False
    assert torch.equal(guided[outside], plain[outside])


def test_implicit_and_explicit_heads_combine_in_vas(engine: Engine) -> None:
    base = engine.base
    both = req(base, PROMPTS[0], {"tuned": 1.0, "concise": 1.0}, method="vas", n=4, top_k=0)
    events = list(engine.stream([both]))
    assert all(set(e.contributions) == {"tuned", "concise"} for e in events)
    guided = engine.next_token_scores([both])[0]
    plain = engine.next_token_scores([req(base, PROMPTS[0], method="base")])[0]
    first = events[0]
    assert abs(sum(first.contributions.values()) - float(guided[first.token_id] - plain[first.token_id])) < 1e-4


# ---- chunk-level search ----------------------------------------------------------------------------
def test_select_beams_keeps_the_best_ties_to_the_earlier() -> None:
    assert select_beams([0.1, 0.5, 0.5, -1.0, 0.7], 3) == [4, 1, 2]
    assert select_beams([1.0], 4) == [0]


def test_one_candidate_one_beam_equals_plain_sampling(engine: Engine) -> None:
    base = engine.base
    one = IVGParams(candidates=1, chunk_tokens=3, beams=1)
    for seed in range(3):
        # explicit heads are weighted but with one candidate nothing is ranked; chunks still hand over
        ivg = req(base, PROMPTS[seed], {"concise": 1.0, "positive": 1.0}, seed=seed, ivg=one, ignore_eos=True)
        [got] = engine.generate([ivg])
        [want] = engine.generate([req(base, PROMPTS[seed], method="base", seed=seed, ignore_eos=True)])
        assert got.token_ids == want.token_ids
        assert got.compute.samples == 4  # 12 tokens in chunks of 3: the candidate was handed over 3 times
        assert got.forward_rows == want.forward_rows  # no scoring rows without a ranking
        assert "".join(e.text for e in engine.stream([ivg])) == got.text  # C = B = 1 streams
    # with an implicit head, C = B = 1 is token-level guidance alone: the same as vas with that head
    guided = req(base, PROMPTS[0], {"tuned": 1.0}, beta=3.0, ivg=IVGParams(1, 2, 1, implicit_weight=1.0), seed=4)
    vas = req(base, PROMPTS[0], {"tuned": 1.0}, beta=3.0, method="vas", seed=4)
    assert engine.generate([guided])[0].token_ids == engine.generate([vas])[0].token_ids


@pytest.mark.parametrize("shared_layers", [False, True])
def test_beam_cache_reordering_equals_recomputation(fresh_tiny_base: BaseModel, shared_layers: bool) -> None:
    """Every token of the winner: its logprob from the reordered cache equals the one recomputed from the prefix."""
    base = fresh_tiny_base

    def head(name: str, kind: str, seed: int):
        h = randomize_head(new_head(base, name, kind=kind), seed)  # type: ignore[arg-type]
        if kind == "implicit":
            h.output = new_head(base, name, kind=kind).output  # implicit heads carry no value output
        if shared_layers and h.adapter is not None:  # adapt the top layer only: the bottom one is per sequence
            h.adapter = {k: v for k, v in h.adapter.items() if ".layers.0." not in k}
        return h

    engine = Engine(base, [head("concise", "lora", 1), head("tuned", "implicit", 2), head("positive", "linear", 3)])
    assert (engine.heads.split == 1) == shared_layers
    params = IVGParams(candidates=3, chunk_tokens=2, beams=2)
    for seed in range(2):
        weights = {"concise": 1.0, "positive": 0.5, "tuned": 1.0}
        request = req(base, PROMPTS[seed], weights, seed=seed, n=9, ivg=params, ignore_eos=True)
        other = req(base, PROMPTS[2], {"concise": 1.0}, method="vas", seed=7, n=5)  # shares the batch, leaves early
        result, _ = engine.generate([request, other])
        assert result.compute.samples == 6 + 4 * 6  # B·C at start, then B·C per chunk boundary (tokens 2, 4, 6, 8)
        assert len(result.logprobs) == len(result.token_ids) == 9
        for t, token in enumerate(result.token_ids):
            prefix = GenerationRequest(
                request.prompt_ids + result.token_ids[:t], request.sampling, request.personalization
            )
            recomputed = float(torch.log_softmax(engine.next_token_scores([prefix])[0], -1)[token])
            assert abs(recomputed - result.logprobs[t]) < 1e-4, (seed, t)


def test_search_keeps_the_candidate_with_the_highest_value(engine: Engine) -> None:
    """One chunk covering the whole answer: ivg is Best-of-C by the explicit value of the last token."""
    base = engine.base
    params = IVGParams(candidates=4, chunk_tokens=64, beams=1)
    request = req(base, PROMPTS[0], {"positive": 1.0}, seed=3, n=6, ivg=params, ignore_eos=True)
    batch = engine.open_batch()
    for _ in batch.run([request]):
        pass
    [result] = batch.results()
    candidates = batch.outputs
    assert len(candidates) == 4
    best = max(candidates, key=lambda o: o.value)
    assert result.text == best.text.text and len({o.value for o in candidates}) == 4
    for i, out in enumerate(candidates):  # scoring never changes what a candidate samples
        [plain] = engine.generate([req(base, PROMPTS[0], method="base", seed=derive_seed(3, i), n=6, ignore_eos=True)])
        assert tuple(out.token_ids) == plain.token_ids
    assert result.compute.samples == 4 and result.reward is None


def test_ivg_batched_equals_alone(engine: Engine) -> None:
    base = engine.base
    requests = [
        req(base, PROMPTS[0], {"concise": 1.0, "tuned": 0.5}, seed=1, n=8, ivg=IVGParams(2, 3, 2)),
        req(base, PROMPTS[1], {"positive": 1.0}, seed=2, n=6, ivg=IVGParams(3, 2, 1)),
        req(base, PROMPTS[2], {"concise": 1.0}, method="vas", seed=3, n=7),
    ]
    together = engine.generate(requests)
    for request, got in zip(requests, together, strict=True):
        alone = engine.generate([request])[0]
        assert got.token_ids == alone.token_ids and got.compute == alone.compute


# ---- AISP -----------------------------------------------------------------------------------------
def test_normals_are_seeded_standard_normals() -> None:
    seeds = torch.tensor([1, 2, 1])
    steps = torch.tensor([0, 0, 0])
    x = normals(seeds, steps, 4096)
    assert torch.equal(x[0], x[2]) and not torch.equal(x[0], x[1])
    assert torch.equal(normals(seeds[1:2], steps[1:2], 4096)[0], x[1])  # independent of the batch
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1.0) < 0.05
    assert not torch.equal(normals(seeds, steps + 1, 8), normals(seeds, steps, 8))


def test_sigma_zero_returns_base_samples(engine: Engine) -> None:
    base = engine.base
    params = AISPParams(sigma=0.0, lam=0.5, samples=3, iterations=2)
    request = req(base, PROMPTS[0], method="aisp", seed=5, n=10, aisp=params)
    [result] = engine.generate([request], reward=longest)
    samples = [
        engine.generate([req(base, PROMPTS[0], method="base", seed=derive_seed(5, k), n=10)])[0].text for k in range(6)
    ]
    assert result.text in samples and len(result.text) == max(len(s) for s in samples)
    assert result.reward == max(len(s) for s in samples)
    assert result.compute.samples == 6
    single = req(base, PROMPTS[1], method="aisp", seed=9, aisp=AISPParams(sigma=0.0, samples=1, iterations=1))
    plain = req(base, PROMPTS[1], method="base", seed=9)
    assert engine.generate([single], reward=longest)[0].token_ids == engine.generate([plain])[0].token_ids


def test_perturbation_changes_samples_and_is_batch_invariant(engine: Engine) -> None:
    base = engine.base
    params = AISPParams(sigma=3.0, lam=0.1, samples=2, iterations=3)
    request = req(base, PROMPTS[0], method="aisp", seed=1, n=10, aisp=params)
    [alone] = engine.generate([request], reward=longest)
    other = req(base, PROMPTS[1], method="aisp", seed=2, n=6, aisp=AISPParams(sigma=1.0, samples=3, iterations=2))
    together = engine.generate([other, request], reward=longest)
    assert together[1].token_ids == alone.token_ids and together[1].compute == alone.compute
    assert alone.compute.samples == 6 and together[0].compute.samples == 6
    unperturbed = req(base, PROMPTS[0], method="aisp", seed=1, n=10, aisp=AISPParams(0.0, 0.1, 2, 3))
    texts = {engine.generate([r], reward=longest)[0].text for r in (request, unperturbed)}
    assert len(texts) == 2
    events = list(engine.stream([request], reward=longest))
    assert len(events) == 1 and events[0].text == alone.text and events[0].compute == alone.compute


def test_update_mean_moves_to_the_weighted_samples() -> None:
    T, H = 5, 8
    mean = torch.randn(T, H, generator=torch.Generator().manual_seed(0))
    seeds, lengths = [11, 12], [5, 3]
    eps = [normals(torch.full((T,), s), torch.arange(T), H) for s in seeds]
    # a tiny lambda puts all weight on the best sample; positions only it reached follow it alone
    moved = update_mean(mean, seeds, lengths, [0.0, 1.0], sigma=0.5, lam=1e-3)
    assert torch.allclose(moved[:3], mean[:3] + 0.5 * eps[1][:3], atol=1e-5)
    assert torch.allclose(moved[3:], mean[3:] + 0.5 * eps[0][3:], atol=1e-5)  # only sample 0 got that far
    even = update_mean(mean, seeds, [5, 5], [1.0, 1.0], sigma=2.0, lam=1.0)
    assert torch.allclose(even, mean + 2.0 * (eps[0] + eps[1]) / 2, atol=1e-5)
    untouched = update_mean(mean, seeds, [2, 2], [0.0, 1.0], sigma=1.0, lam=1.0)
    assert torch.equal(untouched[2:], mean[2:])


# ---- compute and validation -----------------------------------------------------------------------
def test_every_method_reports_its_compute(engine: Engine) -> None:
    base = engine.base
    params = base.num_parameters
    cases = {
        "base": req(base, PROMPTS[0], method="base", n=6, ignore_eos=True),
        "vas": req(base, PROMPTS[0], {"concise": 1.0}, method="vas", n=6, ignore_eos=True),
        "bon": req(base, PROMPTS[0], {"concise": 1.0}, method="bon", n=6, ignore_eos=True),
        "ivg": req(base, PROMPTS[0], {"concise": 1.0}, n=6, ivg=IVGParams(2, 3, 2), ignore_eos=True),
        "aisp": req(base, PROMPTS[0], method="aisp", n=6, aisp=AISPParams(0.5, 0.1, 2, 2), ignore_eos=True),
    }
    prompt = len(cases["base"].prompt_ids)
    got = {name: engine.generate([r], reward=longest)[0].compute for name, r in cases.items()}
    for c in got.values():
        assert c.flops == 2.0 * params * c.processed_tokens
    assert got["base"].forwards == 6 and got["base"].forward_rows == 6 and got["base"].samples == 1
    assert got["base"].processed_tokens == prompt + 6
    assert got["vas"].forward_rows == 12  # base row + the concise adapter row
    bon = got["bon"]  # N = 4 samples share one prefill
    assert bon.samples == 4 and bon.forwards == 6 and bon.forward_rows == 6 + 3 * 5
    assert bon.processed_tokens == prompt + 4 * 6
    ivg = got["ivg"]  # 4 candidates x 2 rows; one chunk boundary at 3 tokens, one prefill
    assert ivg.samples == 8 and ivg.forwards == 6 and ivg.forward_rows == 2 * (6 * 4 - 3)
    aisp = got["aisp"]  # two iterations of two samples, one prefill each, one after the other
    assert aisp.samples == 4 and aisp.forwards == 12 and aisp.forward_rows == 2 * (6 + 5)
    stream = list(engine.stream([cases["vas"]]))
    assert stream[-1].compute == got["vas"] and all(e.compute is None for e in stream[:-1])


def test_parameters_are_validated_with_clear_messages(engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"ivg.candidates must be an integer in \[1, 16\], got 0"):
        IVGParams(candidates=0)
    with pytest.raises(ConfigError, match=r"ivg.chunk_tokens"):
        IVGParams(chunk_tokens=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at most 64 sequences per request, got 16 x 8 = 128"):
        IVGParams(candidates=8, beams=16)
    with pytest.raises(ConfigError, match=r"ivg.implicit_weight"):
        IVGParams(implicit_weight=float("nan"))
    with pytest.raises(ConfigError, match=r"aisp.lam must be a finite number in \[0.001, 100.0\], got 0"):
        AISPParams(lam=0)
    with pytest.raises(ConfigError, match=r"aisp.sigma"):
        AISPParams(sigma=-1.0)
    with pytest.raises(ConfigError, match=r"aisp.samples x aisp.iterations must be at most 256"):
        AISPParams(samples=64, iterations=16)
    with pytest.raises(ConfigError, match=r"ivg has unknown field.*bogus.*valid fields: candidates, chunk_tokens"):
        Personalization(method="ivg", ivg={"beams": 2, "bogus": 1})  # type: ignore[arg-type]
    p = Personalization({"concise": 1.0}, method="ivg", ivg={"beams": 3})  # type: ignore[arg-type]
    assert p.ivg == IVGParams(beams=3) and p.to_dict()["ivg"]["beams"] == 3  # type: ignore[index]
    assert "aisp" not in p.to_dict()
    base = engine.base
    with pytest.raises(ConfigError, match="ranks partial responses by explicit value heads"):
        engine.generate([req(base, PROMPTS[0], {"tuned": 1.0})])  # only an implicit head to rank with
    with pytest.raises(RewardError, match="method 'aisp' ranks samples"):
        engine.generate([req(base, PROMPTS[0], method="aisp")])  # no weights and no reward function


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_generates_with_ivg_and_aisp_and_trains_an_implicit_head(tmp_path: Path, tiny_head_dir) -> None:
    import json

    from typer.testing import CliRunner

    from personalize.cli import app

    tiny = build_tiny_base()
    model_dir = tmp_path / "model"
    tiny.model.save_pretrained(model_dir)
    tiny.tokenizer.save_pretrained(model_dir)
    (model_dir / "personalize.json").write_text(json.dumps({"backbone_id": tiny.backbone_id}))
    heads = [tiny_head_dir("harmless", kind="lora", seed=1), tiny_head_dir("sft", kind="implicit", seed=2)]
    common = ["--base-model", str(model_dir), *(x for h in heads for x in ("--heads", str(h)))]
    env = {"PERSONALIZE_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    ivg = ["--method", "ivg", "--weights", "harmless=1,sft=1", "--candidates", "2", "--beams", "1"]
    result = runner.invoke(
        app,
        ["generate", "Hi", *ivg, "--chunk-tokens", "3", "--max-new-tokens", "6", "--seed", "0", "--json", *common],
        env=env,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (
        out["method"] == "ivg"
        and out["ivg"]["candidates"] == 2
        and out["head_versions"] == {"harmless": "1", "sft": "1"}
    )
    assert out["compute"]["samples"] >= 2 and out["compute"]["flops"] > 0
    aisp = ["--method", "aisp", "--weights", "harmless=1", "--samples", "2", "--iterations", "2", "--sigma", "0.3"]
    result = runner.invoke(
        app, ["generate", "Hi", *aisp, "--max-new-tokens", "5", "--seed", "1", "--json", *common], env=env
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["aisp"] == {"sigma": 0.3, "lam": 0.1, "samples": 2, "iterations": 2} and out["compute"]["samples"] == 4
    assert out["reward"] is not None
    bad = runner.invoke(app, ["generate", "Hi", "--method", "ivg", "--beams", "0", *common], env=env)
    assert bad.exit_code == 2 and "ivg.beams must be an integer" in bad.output
    train = ["heads", "train", "--kind", "implicit", "--objective", "harmless-sft", "--reward", "harmless"]
    small = ["--limit", "2", "--samples-per-prompt", "2", "--max-new-tokens", "4", "--epochs", "1", "--batch-size", "2"]
    out_dir = tmp_path / "harmless-sft"
    result = runner.invoke(app, [*train, *small, "--out", str(out_dir), "--base-model", str(model_dir)], env=env)
    assert result.exit_code == 0, result.output
    assert "rollouts: 4/4 (100%)" in result.output  # progress as plain lines: the runner is no terminal
    assert load_head(out_dir, tiny).meta.kind == "implicit"
    # a value head on the same (cached) rollouts with sentence-shaped rewards; the mode is recorded
    shaped = ["heads", "train", "--kind", "linear", "--objective", "harmless", "--reward", "harmless"]
    dest = tmp_path / "harmless-shaped"
    base_dir = ["--base-model", str(model_dir)]
    result = runner.invoke(app, [*shaped, *small, "--shaping", "sentence", "--out", str(dest), *base_dir], env=env)
    assert result.exit_code == 0, result.output
    assert "reusing 4 rollouts" in result.output
    assert json.loads((dest / "head.json").read_text())["training"]["shaping"] == "sentence"
    assert "scoring prefixes (sentence)" in result.output
    # the same head again: the shaped rewards are read back, not rescored, and it trains the same
    again = tmp_path / "harmless-shaped-again"
    result = runner.invoke(app, [*shaped, *small, "--shaping", "sentence", "--out", str(again), *base_dir], env=env)
    assert result.exit_code == 0, result.output
    assert "reusing sentence-shaped rewards" in result.output and "scoring prefixes" not in result.output
    first, second = (json.loads((d / "head.json").read_text()) for d in (dest, again))
    assert first["training"]["epoch_losses"] == second["training"]["epoch_losses"]
    assert first["calibration"] == second["calibration"]
    # a warm start from that head: recorded in head.json; a head of another kind is refused with exit 2
    warm = [*shaped, *small, "--init", str(dest), *base_dir]
    result = runner.invoke(app, [*warm, "--out", str(tmp_path / "warm")], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "warm" / "head.json").read_text())["training"]["init"] == {
        "path": str(dest),
        "version": "1",
    }
    # a budget-aware head warm-started from that (budget-blind) head; scales that are not numbers: exit 2
    # (charging unfinished rollouts, recorded with the training config); a charge out of range: exit 2
    budget = [*warm, "--budget-scales", "1,4", "--unfinished-penalty", "0.5"]
    result = runner.invoke(app, [*budget, "--out", str(tmp_path / "budget")], env=env)
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "budget" / "head.json").read_text())
    assert recorded["budget_scales"] == [1.0, 4.0] and recorded["training"]["config"]["unfinished_penalty"] == 0.5
    result = runner.invoke(app, [*warm, "--unfinished-penalty", "3", "--out", str(tmp_path / "nc")], env=env)
    assert result.exit_code == 2 and "unfinished_penalty must be in [0, 2]" in result.output, result.output
    result = runner.invoke(app, [*warm, "--budget-scales", "1,many", "--out", str(tmp_path / "nb")], env=env)
    assert result.exit_code == 2 and "--budget-scales takes numbers" in result.output, result.output
    # the stopping option: answers ended at sentence ends are scored once, then read back; kept in head.json
    stopping = [*shaped, *small, "--shaping", "sentence", "--stop-option", *base_dir]
    # (the second one a stopping head: --steer end, recorded in head.json; a mode that is not one: exit 2)
    for name, steer in (("stop", "all"), ("stop-again", "end")):
        result = runner.invoke(app, [*stopping, "--steer", steer, "--out", str(tmp_path / name)], env=env)
        assert result.exit_code == 0, result.output
        scored = "scoring answers ended at sentence ends" in result.output
        assert scored == (name == "stop") and ("reusing stop rewards" in result.output) == (name != "stop")
        recorded = json.loads((tmp_path / name / "head.json").read_text())
        training = recorded["training"]
        assert training["config"]["stop_option"] is True and training["stopping"]["rollout_mean"] is not None
        assert recorded["steer"] == steer and training["config"]["steer"] == steer
    result = runner.invoke(app, [*stopping, "--steer", "ends", "--out", str(tmp_path / "nsteer")], env=env)
    assert result.exit_code == 2 and "steer must be one of all, end" in result.output, result.output
    result = runner.invoke(app, [*train, *small, "--stop-option", "--out", str(tmp_path / "ns"), *base_dir], env=env)
    assert result.exit_code == 2 and "stopping option trains value heads" in result.output, result.output
    mismatch = [*shaped, *small, "--init", str(heads[0]), "--out", str(tmp_path / "z"), *base_dir]
    result = runner.invoke(app, mismatch, env=env)
    assert result.exit_code == 2 and "--init head is a 'lora' head" in result.output, result.output
    assert "rollouts" not in result.output  # refused before any rollout is read or sampled
    for wrong in (["--shaping", "words"], ["--shaping", "token", "--kind", "implicit"]):
        result = runner.invoke(app, [*shaped, *small, *wrong, "--out", str(tmp_path / "x"), *common[:2]], env=env)
        assert result.exit_code == 2 and "--shaping" in result.output, result.output
    # a second round: rollouts from the base steered by the harmless head, stored apart from the base ones
    steered = [*shaped, *small, "--rollout-weights", "harmless=1", "--rollout-beta", "2", *common]
    result = runner.invoke(app, [*steered, "--out", str(tmp_path / "round2")], env=env)
    assert result.exit_code == 0, result.output
    assert "rollouts steered by harmless=1: 4/4" in result.output and "reusing" not in result.output
    training = json.loads((tmp_path / "round2" / "head.json").read_text())["training"]
    assert training["rollout_policy"] == {"weights": {"harmless": 1.0}, "beta": 2.0, "heads": {"harmless": "1"}}
    assert training["rollouts_file"] != json.loads((dest / "head.json").read_text())["training"]["rollouts_file"]
    assert "rollout_policy" not in json.loads((dest / "head.json").read_text())["training"]
    result = runner.invoke(app, [*steered, "--out", str(tmp_path / "round2b")], env=env)
    assert result.exit_code == 0 and "reusing 4 rollouts" in result.output, result.output
    # the base model's rollouts as well as the steered ones: both reused, both recorded
    result = runner.invoke(app, [*steered, "--with-base-rollouts", "--out", str(tmp_path / "mixed")], env=env)
    assert result.exit_code == 0 and result.output.count("reusing 4 rollouts") == 2, result.output
    mixed = json.loads((tmp_path / "mixed" / "head.json").read_text())["training"]
    assert mixed["rollouts_file"] == training["rollouts_file"] and mixed["rollouts"] == 8
    assert mixed["base_rollouts_file"] == json.loads((dest / "head.json").read_text())["training"]["rollouts_file"]
    result = runner.invoke(app, [*shaped, *small, "--with-base-rollouts", "--out", str(tmp_path / "v"), *common])
    assert result.exit_code == 2 and "--with-base-rollouts adds" in result.output, result.output
    nohead = [*shaped, *small, "--rollout-weights", "concise=1", "--out", str(tmp_path / "y"), *common]
    result = runner.invoke(app, nohead, env=env)
    assert result.exit_code == 2 and "no head was found" in result.output, result.output
    unused = [*shaped, *small, "--rollout-weights", "harmless=1,concise=0", "--rollout-beta", "2", *common]
    result = runner.invoke(app, [*unused, "--out", str(tmp_path / "w0")], env=env)  # weight 0 needs no head
    assert result.exit_code == 0 and "reusing 4 rollouts" in result.output, result.output
    # eval: a second identical run decodes nothing (stored runs), and writes the same table
    run = [
        "eval", "--objectives", "harmless", "--betas", "1", "--bon", "1,2", "--ivg", "", "--aisp-samples", "",
        "--sweep", "", "--limit", "2", "--max-new-tokens", "4", "--latency-prompts", "0", "--batch-size", "2",
        "--cache", str(tmp_path / "eval-cache"),
    ]  # fmt: skip
    first = runner.invoke(app, [*run, "--markdown", str(tmp_path / "a.md"), *common], env=env)
    assert first.exit_code == 0, first.output
    assert "0 stored runs reused" in first.stderr
    second = runner.invoke(app, [*run, "--markdown", str(tmp_path / "b.md"), *common], env=env)
    assert second.exit_code == 0, second.output
    assert "4 stored runs reused" in second.stderr  # base, vas, two Best-of-N sample sets
    assert (tmp_path / "a.md").read_text() == (tmp_path / "b.md").read_text()
    for option, value in (("--betas", "1,x"), ("--bon", "two")):
        bad = runner.invoke(app, [*run, option, value, *common], env=env)
        assert bad.exit_code == 2 and f"{option} takes numbers" in bad.output, bad.output
