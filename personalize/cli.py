"""The ``personalize`` command line (Typer). Prints through rich; reads env only via Settings."""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from personalize.db.cli import db_app, users_app
from personalize.errors import ConfigError, PersonalizeError

app = typer.Typer(help="Personalize a frozen language model at decoding time.", no_args_is_help=True)
heads_app = typer.Typer(help="Value heads: train, list.", no_args_is_help=True)
app.add_typer(heads_app, name="heads")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
console = Console()
err = Console(stderr=True)

BaseModelOpt = Annotated[
    str | None,
    typer.Option("--base-model", help="Hugging Face id, local directory, or 'embedded' (default: settings)."),
]
HeadsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--heads",
        help="Head directory, or a folder of head directories (repeatable). "
        "Default: the shipped heads plus DATA_DIR/heads.",
    ),
]


def parse_weights(text: str) -> dict[str, float]:
    """``concise=1,helpful=0.5`` -> ``{"concise": 1.0, "helpful": 0.5}``."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected NAME=NUMBER pairs separated by commas, got {part!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"weight for {name.strip()!r} is not a number: {value!r}") from None
    return weights


def _parse_floats(option: str, text: str) -> tuple[float, ...]:
    """``1,4,16`` -> ``(1.0, 4.0, 16.0)``; a clear error naming ``option`` for anything else."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            values.append(float(part))
        except ValueError:
            raise typer.BadParameter(f"{option} takes numbers separated by commas, got {part!r}") from None
    return tuple(values)


def _pairs(text: str) -> dict[str, str]:
    """``concise=concise-sft,helpful=helpful-sft`` -> ``{"concise": "concise-sft", ...}``."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise typer.BadParameter(f"expected OBJECTIVE=HEAD pairs separated by commas, got {part!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _settings():
    from personalize.settings import Settings

    return Settings()


def _load_base(settings: Any, base_model: str | None) -> Any:
    """The base model named on the command line, else by the settings, in the settings' dtype."""
    from personalize.models import load_base_model

    return load_base_model(base_model or settings.base_model, data_dir=settings.data_dir, dtype=settings.torch_dtype)


def _head_dirs(heads: list[Path] | None, data_dir: Path) -> list[Path]:
    from personalize.heads import SHIPPED_HEADS_DIR, discover_heads

    return discover_heads(list(heads) if heads else [SHIPPED_HEADS_DIR, data_dir / "heads"])


def _load_heads(base: Any, wanted: set[str], heads: list[Path] | None, data_dir: Path) -> tuple[list[Any], list[str]]:
    """The heads found (as :func:`_head_dirs` finds them) whose objective is wanted, and the wanted ones missing."""
    from personalize.heads import HEAD_JSON, load_head

    def objective_of(folder: Path) -> str | None:  # from head.json alone: weights are read only for wanted heads
        try:
            return str(json.loads((folder / HEAD_JSON).read_text())["objective"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: load_head below says what is wrong with it

    folders = [f for f in _head_dirs(heads, data_dir) if objective_of(f) in (*wanted, None)]
    loaded = [h for h in (load_head(f, base) for f in folders) if h.objective in wanted]
    return loaded, sorted(wanted - {h.objective for h in loaded})


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user's message.")],
    weights: Annotated[str, typer.Option(help="Objective weights, e.g. concise=1,helpful=0.5.")] = "",
    beta: Annotated[float, typer.Option(help="Overall steering strength.")] = 1.0,
    method: Annotated[str, typer.Option(help="base | vas | bon | ivg | aisp.")] = "vas",
    top_k: Annotated[int, typer.Option("--top-k", help="Candidates re-scored per token.")] = 20,
    best_of: Annotated[int, typer.Option("--best-of", help="N for method bon.")] = 4,
    candidates: Annotated[int | None, typer.Option(help="ivg: chunks sampled per beam (C; default 2).")] = None,
    chunk_tokens: Annotated[int | None, typer.Option("--chunk-tokens", help="ivg: tokens per chunk (L; 16).")] = None,
    beams: Annotated[int | None, typer.Option(help="ivg: partial responses kept (B; default 2).")] = None,
    implicit_weight: Annotated[
        float | None, typer.Option("--implicit-weight", help="ivg: scales implicit heads' weights (default 1).")
    ] = None,
    sigma: Annotated[float | None, typer.Option(help="aisp: pre-logit noise std (default 0.5).")] = None,
    lam: Annotated[float | None, typer.Option(help="aisp: importance-weight temperature lambda (0.1).")] = None,
    samples: Annotated[int | None, typer.Option(help="aisp: samples per iteration (N; default 4).")] = None,
    iterations: Annotated[int | None, typer.Option(help="aisp: iterations (I; default 4).")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    base_model: BaseModelOpt = None,
    heads: HeadsOpt = None,
) -> None:
    """Generate one answer, steered by the given objective weights."""
    from dataclasses import asdict

    from personalize.decoding import Engine, GenerationRequest, GenerationResult, Personalization, SamplingParams
    from personalize.decoding.methods import streams

    settings = _settings()
    ivg = {"candidates": candidates, "chunk_tokens": chunk_tokens, "beams": beams, "implicit_weight": implicit_weight}
    aisp = {"sigma": sigma, "lam": lam, "samples": samples, "iterations": iterations}
    try:
        personalization = Personalization(
            parse_weights(weights),
            beta=beta,
            method=method,
            top_k=top_k,
            best_of=best_of,
            ivg={k: v for k, v in ivg.items() if v is not None},  # type: ignore[arg-type]  # validated mapping
            aisp={k: v for k, v in aisp.items() if v is not None},  # type: ignore[arg-type]
        )
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop or ()), seed=seed
        )
        base = _load_base(settings, base_model)
        loaded, _ = _load_heads(base, set(personalization.weights), heads, settings.data_dir)
        engine = Engine(base, loaded)
        request = GenerationRequest(tuple(base.encode_prompt(prompt, chat=not raw)), sampling, personalization)
        start = time.perf_counter()
        result: GenerationResult | None = None
        if as_json or not streams(request):  # bon, aisp and ivg search have no answer before the end
            [result] = engine.generate([request])
            if not as_json:
                console.print(result.text, markup=False, highlight=False)
        else:
            for event in engine.stream([request]):
                console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
        elapsed = time.perf_counter() - start
    except PersonalizeError as exc:
        raise _fail(exc) from exc
    if as_json and result is not None:
        out = {
            "text": result.text,
            "completion_tokens": result.completion_tokens,
            "prompt_tokens": result.prompt_tokens,
            "finish_reason": result.finish_reason,
            **personalization.to_dict(),
            "head_versions": dict(result.head_versions),
            "seed": seed,
            "base_model": base.backbone_id,
            "elapsed_s": round(elapsed, 3),
            "forward_rows": result.forward_rows,
            "compute": asdict(result.compute),
            "reward": result.reward,
        }
        typer.echo(json.dumps(out, ensure_ascii=False))
    elif result is not None and result.reward is not None:
        err.print(f"[dim]{method}, {result.compute.samples} samples: reward {result.reward:.3f}[/dim]")


@heads_app.command("list")
def heads_list(
    heads: HeadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List head directories and their metadata (no model is loaded)."""
    from personalize.heads import load_head

    settings = _settings()
    rows = []
    for folder in _head_dirs(heads, settings.data_dir):
        try:
            meta = load_head(folder).meta
        except PersonalizeError as exc:
            err.print(f"[yellow]skipping {folder}: {exc}[/yellow]")
            continue
        size = sum(p.stat().st_size for p in folder.iterdir())
        rows.append(
            {
                "objective": meta.objective,
                "version": meta.version,
                "kind": meta.kind,
                "steer": meta.steer,
                "backbone_id": meta.backbone_id,
                "reward": meta.reward,
                "scale": meta.calibration.scale,
                "size_mb": round(size / 2**20, 2),
                "path": str(folder),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("objective", "version", "kind", "steer", "backbone", "reward", "scale", "MB", "path")
    keys = ("objective", "version", "kind", "steer", "backbone_id", "reward", "scale", "size_mb", "path")
    for r in rows:
        table.add_row(*(str(r[k]) for k in keys))
    console.print(table if rows else "no heads found")


@heads_app.command("train")
def heads_train(
    objective: Annotated[str, typer.Option(help="Objective name the head serves (e.g. concise).")],
    reward: Annotated[str, typer.Option(help="Reward function name (see personalize.rewards).")],
    out: Annotated[Path, typer.Option(help="Directory to write the head to.")],
    kind: Annotated[
        str,
        typer.Option(
            help="lora (adapter + extra decode row), linear (free at decode), or implicit "
            "(an adapter fine-tuned on the best rollouts: ivg's token-level guidance)."
        ),
    ] = "lora",
    epochs: Annotated[int, typer.Option()] = 3,
    lr: Annotated[float, typer.Option(help="LoRA learning rate.")] = 3e-4,
    head_lr: Annotated[float, typer.Option("--head-lr", help="Value-output learning rate.")] = 2e-3,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    gamma: Annotated[float, typer.Option()] = 1.0,
    lam: Annotated[float, typer.Option(help="TD(lambda) lambda.")] = 0.95,
    lora_rank: Annotated[int, typer.Option("--lora-rank")] = 8,
    lora_layers: Annotated[int, typer.Option("--lora-layers", help="Adapt only the top N layers (0: all).")] = 0,
    lora_targets: Annotated[str, typer.Option("--lora-targets", help="Adapted linear layers.")] = "q_proj,v_proj",
    top_fraction: Annotated[
        float, typer.Option("--top-fraction", help="implicit: share of the prompts' best rollouts to fine-tune on.")
    ] = 0.5,
    samples_per_prompt: Annotated[int, typer.Option("--samples-per-prompt")] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 256,
    rollout_batch: Annotated[int, typer.Option("--rollout-batch")] = 32,
    limit: Annotated[int, typer.Option(help="Use only the first N training prompts (0: all).")] = 0,
    shaping: Annotated[
        str,
        typer.Option(
            help="lora/linear: reward per action. none: the final reward on the last token; sentence: "
            "the change in the reward of the response so far at each sentence or line end; token: at every token. "
            "A reward with a prefix_score (helpful) scores the unfinished text with it."
        ),
    ] = "none",
    seed: Annotated[int, typer.Option()] = 0,
    version: Annotated[str, typer.Option()] = "1",
    description: Annotated[str, typer.Option()] = "",
    rollout_weights: Annotated[
        str,
        typer.Option(
            "--rollout-weights",
            help="Sample the rollouts from the base model steered by these heads (VAS), e.g. helpful=1: "
            "a second round, whose values are those of the steered policy. '' (default): the plain base model.",
        ),
    ] = "",
    rollout_beta: Annotated[float, typer.Option("--rollout-beta", help="Beta of the steered rollout policy.")] = 1.0,
    with_base_rollouts: Annotated[
        bool,
        typer.Option(
            "--with-base-rollouts",
            help="With --rollout-weights: train on the base model's rollouts as well as the steered ones "
            "(both sampled, or reused, with the same prompts and settings).",
        ),
    ] = False,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Warm-start from this trained head (same kind, value rank and LoRA shape) instead of from zero.",
        ),
    ] = None,
    budget_scales: Annotated[
        str,
        typer.Option(
            "--budget-scales",
            help="lora/linear: make the head aware of the tokens left before --max-new-tokens, through "
            "features exp(-left / scale) with these decay lengths in tokens, e.g. 1,4,16,64 ('' : off).",
        ),
    ] = "",
    unfinished_penalty: Annotated[
        float,
        typer.Option(
            "--unfinished-penalty",
            help="lora/linear/implicit: charge every rollout that stops mid-sentence (cut by --max-new-tokens "
            "or not) this much reward, in training only (the reward and the evaluation are unchanged), so the "
            "head learns to finish within the limit. 0: off.",
        ),
    ] = 0.0,
    stop_option: Annotated[
        bool,
        typer.Option(
            "--stop-option",
            help="lora/linear: value ending the answer at every sentence end of the rollouts (the reward of "
            "the answer ended there, scored once and stored), and learn the returns of the policy that ends "
            "it there when that beats the prompt's expected reward, rather than those of the base model's "
            "continuation alone.",
        ),
    ] = False,
    steer: Annotated[
        str,
        typer.Option(
            "--steer",
            help="What the head steers at decode time: 'all' top-k candidates, or only the end-of-answer "
            "tokens ('end': a stopping head that leaves what the answer says to the base model and decides "
            "where it ends; pairs with --stop-option).",
        ),
    ] = "all",
    heads: HeadsOpt = None,
    base_model: BaseModelOpt = None,
) -> None:
    """Train a head: rollouts (cached, shared by objectives) → reward → TD(lambda) (lora/linear) or SFT (implicit)."""
    import shlex
    import sys
    from dataclasses import asdict

    from personalize.data import load_prompts
    from personalize.decoding import Engine, Personalization
    from personalize.heads import load_head
    from personalize.progress import progress_bar
    from personalize.rewards import get_reward
    from personalize.training import (
        RolloutConfig,
        TrainConfig,
        train_head,
    )
    from personalize.training.implicit import select_best
    from personalize.training.shaping import SHAPING_MODES
    from personalize.training.td import check_init

    settings = _settings()
    try:
        if shaping not in SHAPING_MODES:
            raise ConfigError(f"--shaping must be one of {', '.join(SHAPING_MODES)}, got {shaping!r}")
        if shaping != "none" and kind == "implicit":
            raise ConfigError("--shaping applies to value heads (lora, linear); implicit heads are fine-tuned")
        config = TrainConfig(
            kind=kind,  # type: ignore[arg-type]  # validated in __post_init__
            epochs=epochs,
            lr=lr,
            head_lr=head_lr,
            batch_size=batch_size,
            gamma=gamma,
            lam=lam,
            lora_rank=lora_rank,
            lora_layers=lora_layers,
            lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
            top_fraction=top_fraction,
            seed=seed,
            budget_scales=_parse_floats("--budget-scales", budget_scales),
            unfinished_penalty=unfinished_penalty,
            stop_option=stop_option,
            steer=steer,
        )
        rollout_config = RolloutConfig(samples_per_prompt, max_new_tokens, batch_size=rollout_batch, seed=seed)
        steer_by = {name: w for name, w in parse_weights(rollout_weights).items() if w != 0}  # 0 needs no head
        policy = Personalization(steer_by, beta=rollout_beta)
        steered = bool(steer_by)
        if with_base_rollouts and not steered:
            raise ConfigError(
                "--with-base-rollouts adds the base model's rollouts to steered ones: give --rollout-weights"
            )
        scorer = get_reward(reward)
        base = _load_base(settings, base_model)
        steering: list[Any] = []
        if steered:
            steering, missing = _load_heads(base, set(steer_by), heads, settings.data_dir)
            if missing:
                raise ConfigError(f"--rollout-weights names {missing}, for which no head was found; pass --heads")
        start_from = None
        if init is not None:  # checked before any rollout is sampled
            start_from = load_head(init, base)
            check_init(start_from, config, base.hidden_size)
        engine = Engine(base, steering)
        prompts = [p.prompt for p in load_prompts("train")]
        prompts = prompts[:limit] if limit else prompts
        rollout_policy: dict[str, object] | None = None
        steering_key: dict[str, object] | None = None
        if steered:
            rollout_policy = {
                "weights": dict(policy.weights),
                "beta": policy.beta,
                "heads": {name: meta.version for name, meta in engine.objectives.items()},
            }
            steering_key = {**rollout_policy, "meta": {n: asdict(m) for n, m in engine.objectives.items()}}
        rollouts, cache = _stored_rollouts(engine, prompts, rollout_config, policy, steering_key, settings.data_dir)
        base_cache = None
        if with_base_rollouts:  # the base policy's rollouts too: its states and the steered policy's
            base_rollouts, base_cache = _stored_rollouts(
                engine, prompts, rollout_config, Personalization({}), None, settings.data_dir
            )
            rollouts = base_rollouts + rollouts
        with console.status(f"scoring {len(rollouts)} responses with reward {reward!r}"):
            scores = scorer([r.prompt for r in rollouts], [r.response for r in rollouts]).float().tolist()
        action_rewards = None
        files = [cache] if base_cache is None else [base_cache, cache]
        if shaping != "none":
            action_rewards = _stored_shaping(rollouts, scores, scorer, base, shaping, files)
        stop_rewards = _stored_stop_scores(rollouts, scorer, base, files) if stop_option else None
        used = len(select_best(rollouts, scores, top_fraction)) if kind == "implicit" else len(rollouts)
        steps = epochs * -(-used // batch_size)
        with progress_bar(err) as bar:
            task = bar.add_task(f"training {objective}", total=steps)

            def step(epoch: int, _: int, loss: float) -> None:
                bar.update(task, advance=1, description=f"training {objective} epoch {epoch + 1} loss {loss:.4f}")

            meta = {
                "command": shlex.join(["personalize", *sys.argv[1:]]),  # quoted: copy-pasteable
                "rollouts_file": cache.name,
                **({"base_rollouts_file": base_cache.name} if base_cache is not None else {}),
                "rollout_config": rollout_config.__dict__,
                "prompts": len(prompts),
                "shaping": shaping,
                **({"rollout_policy": rollout_policy} if rollout_policy is not None else {}),
                **({"init": {"path": str(init), "version": start_from.meta.version}} if start_from else {}),
            }
            _, report = train_head(
                base,
                rollouts,
                scores,
                objective,
                out,
                reward_name=reward,
                config=config,
                description=description,
                version=version,
                extra_meta=meta,
                on_step=step,
                action_rewards=action_rewards,
                init=start_from,
                horizon=max_new_tokens,
                stop_rewards=stop_rewards,
            )
    except PersonalizeError as exc:
        raise _fail(exc) from exc
    console.print(
        f"head {objective!r} v{version} → {out}  losses {[round(x, 4) for x in report.epoch_losses]}  "
        f"return {report.return_mean:.3f}±{report.return_std:.3f}  scale {report.scale:.4f}  {report.seconds:.0f}s"
    )


def _cache_key(material: object) -> str:
    """A short stable key of JSON-able ``material``: the file name of what is stored under it."""
    import hashlib

    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stored_rollouts(
    engine: Any, prompts: list[str], config: Any, policy: Any, steering: dict[str, object] | None, data_dir: Path
) -> tuple[list[Any], Path]:
    """Rollouts of ``policy`` (the base model when ``steering`` is None), sampled once and then read back.

    They are stored under a key of the model, prompts and settings, plus ``steering`` (the steering
    heads' weights and metadata) for a steered policy: the base policy's key is left as it always was.
    """
    from personalize.progress import progress_bar
    from personalize.training import load_rollouts, sample_rollouts, save_rollouts

    material: list[object] = [engine.base.backbone_id, prompts, config.__dict__]
    if steering is not None:
        material.append(steering)
    cache = data_dir / "rollouts" / f"{_cache_key(material)}.jsonl"
    if cache.is_file():
        rollouts = load_rollouts(cache)
        console.print(f"reusing {len(rollouts)} rollouts from {cache}")
        return rollouts, cache
    weights = ",".join(f"{name}={weight:g}" for name, weight in policy.weights.items())
    label = "rollouts" + (f" steered by {weights}" if steering is not None else "")
    with progress_bar(err) as bar:
        task = bar.add_task(label, total=len(prompts) * config.samples_per_prompt)
        rollouts = sample_rollouts(engine, prompts, config, policy=policy, on_batch=lambda n: bar.advance(task, n))
    save_rollouts(rollouts, cache)
    return rollouts, cache


def _stored_shaping(
    rollouts: list[Any], scores: list[float], scorer: Any, base: Any, mode: str, files: list[Path]
) -> list[list[float]]:
    """Shaped per-action rewards of ``rollouts`` (read from ``files``), computed once and then read back.

    Scoring every sentence-end prefix takes minutes on a CPU, and training several heads (or the same
    head with other epochs or learning rates) on the same rollouts needs the same rewards. They are
    stored beside the rollouts under a key of those files, the reward's name and description, the
    shaping mode, the package version and the final scores themselves, so a reward that scores
    differently is never served another reward's rewards.
    """
    from personalize import __version__
    from personalize.training.shaping import shaped_rewards

    material = [[f.name for f in files], scorer.name, scorer.description, mode, __version__, scores]
    stored = files[-1].parent / f"shaping-{_cache_key(material)}.json"
    # the key holds the scores, one per rollout: a stored file has one reward list each
    return _stored_json(
        stored,
        f"{mode}-shaped rewards",
        f"scoring prefixes ({mode})",
        lambda advance: shaped_rewards(
            rollouts,
            scores,
            scorer,
            base.decode,
            base.eos_token_ids[0],
            mode=mode,  # type: ignore[arg-type]  # checked by the caller
            on_scored=advance,
        ),
    )


def _stored_stop_scores(rollouts: list[Any], scorer: Any, base: Any, files: list[Path]) -> list[dict[int, float]]:
    """The reward of each rollout's answer ended at each of its sentence ends (the stopping option),
    computed once and stored beside the rollouts, keyed like :func:`_stored_shaping`."""
    from personalize import __version__
    from personalize.training.stopping import stop_scores

    material = [[f.name for f in files], scorer.name, scorer.description, "stop", __version__]
    stored = files[-1].parent / f"stops-{_cache_key(material)}.json"
    maps = _stored_json(
        stored,
        "stop rewards at sentence ends",
        "scoring answers ended at sentence ends",
        lambda advance: [
            {str(j): v for j, v in m.items()} for m in stop_scores(rollouts, scorer, base.decode, on_scored=advance)
        ],
    )
    if len(maps) != len(rollouts):
        raise ConfigError(f"{stored} holds {len(maps)} stop-reward maps for {len(rollouts)} rollouts; delete it")
    return [{int(j): float(v) for j, v in m.items()} for m in maps]


def _stored_json(stored: Path, what: str, label: str, compute: Callable[[Callable[[int], None]], Any]) -> Any:
    """``compute(advance)`` under a progress bar labelled ``label``, written to ``stored`` whole or not
    at all, or read back from it when it is there."""
    from personalize.progress import progress_bar

    if stored.is_file():
        console.print(f"reusing {what} from {stored}")
        return json.loads(stored.read_text())
    with progress_bar(err) as bar:
        task = bar.add_task(label, total=None)
        value = compute(lambda n: bar.advance(task, n))
    tmp = stored.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(stored)  # whole or absent: an interrupted write is not read back
    return value


@app.command("eval")
def evaluate(
    objectives: Annotated[str, typer.Option(help="Objectives to evaluate (heads and rewards of the same names).")] = (
        "concise,helpful,harmless,positive"
    ),
    betas: Annotated[str, typer.Option(help="VAS betas.")] = "1,2,4",
    bon: Annotated[str, typer.Option(help="Best-of-N sizes.")] = "1,2,4,8,16",
    ivg: Annotated[str, typer.Option(help="ivg candidates,chunk_tokens,beams (C,L,B), or '' to skip.")] = "2,16,2",
    ivg_beta: Annotated[float, typer.Option("--ivg-beta", help="ivg: strength of the implicit heads.")] = 1.0,
    implicit: Annotated[
        str, typer.Option(help="ivg token level: objective=implicit-head pairs, e.g. concise=concise-sft.")
    ] = "",
    aisp_samples: Annotated[str, typer.Option("--aisp-samples", help="aisp N values, or '' to skip.")] = "2,4",
    aisp_iterations: Annotated[int, typer.Option("--aisp-iterations", help="aisp I.")] = 4,
    aisp_sigma: Annotated[float, typer.Option("--aisp-sigma", help="aisp noise std.")] = 0.5,
    aisp_lam: Annotated[float, typer.Option("--aisp-lam", help="aisp importance temperature.")] = 0.1,
    sweep: Annotated[
        list[str] | None,
        typer.Option(help="Two objectives to sweep the weight between ('a,b'); repeat for more sweeps, '' for none."),
    ] = None,
    sweep_steps: Annotated[int, typer.Option("--sweep-steps")] = 5,
    sweep_beta: Annotated[float, typer.Option("--sweep-beta")] = 2.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    limit: Annotated[int, typer.Option(help="Evaluate the first N eval prompts (0: all).")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    latency_prompts: Annotated[int, typer.Option("--latency-prompts")] = 6,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the figure (PNG).")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the Markdown table.")] = None,
    compute_plot: Annotated[
        Path | None, typer.Option("--compute-plot", help="Write the reward-vs-compute figure (PNG).")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Store every decoding run here and reuse stored runs (default: DATA_DIR/eval-cache); "
            "an extended or interrupted evaluation decodes only what is new."
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode everything; store nothing.")] = False,
    base_model: BaseModelOpt = None,
    heads: HeadsOpt = None,
) -> None:
    """Compare base, VAS, Best-of-N, IVG and AISP on the eval prompts; write JSON, a Markdown table and plots."""
    from personalize.data import load_prompts
    from personalize.decoding import Engine
    from personalize.decoding.config import AISPParams, IVGParams
    from personalize.evaluation import EvalConfig, Evaluator, RunCache, markdown_table
    from personalize.progress import progress_bar
    from personalize.rewards import get_reward

    settings = _settings()

    try:
        names = tuple(x.strip() for x in objectives.split(",") if x.strip())
        pairs = [tuple(x.strip() for x in text.split(",") if x.strip()) for text in sweep or ["concise,helpful"]]
        pairs = [pair for pair in pairs if pair]
        bad = [",".join(pair) for pair in pairs if len(pair) != 2]
        if bad:
            raise ConfigError(f"--sweep takes two objectives as 'a,b', got {bad}")
        config = EvalConfig(
            objectives=names,
            betas=_parse_floats("--betas", betas),
            bon_sizes=tuple(int(x) for x in _parse_floats("--bon", bon)),
            sweeps=tuple((a, b) for a, b in pairs),
            sweep_steps=sweep_steps,
            sweep_beta=sweep_beta,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            latency_prompts=latency_prompts,
            seed=seed,
            ivg=IVGParams(*(int(x) for x in _parse_floats("--ivg", ivg))) if ivg.strip() else None,
            ivg_beta=ivg_beta,
            implicit=_pairs(implicit),
            aisp_samples=tuple(int(x) for x in _parse_floats("--aisp-samples", aisp_samples)),
            aisp=AISPParams(sigma=aisp_sigma, lam=aisp_lam, iterations=aisp_iterations),
        )
        base = _load_base(settings, base_model)
        wanted = set(names) | set(config.implicit.values())
        loaded, missing = _load_heads(base, wanted, heads, settings.data_dir)
        if missing:
            raise typer.BadParameter(f"no head found for {missing}; pass --heads")
        by_objective = {h.objective: h.meta.reward_name for h in loaded}
        rewards = {name: get_reward(by_objective[name]) for name in names}  # the reward each head names
        prompts = [p.prompt for p in load_prompts("eval")]
        prompts = prompts[:limit] if limit else prompts
        run_cache = None if no_cache else RunCache(cache or settings.data_dir / "eval-cache")
        with progress_bar(err) as bar:
            task = bar.add_task("evaluating", total=None)

            def progress(label: str) -> None:
                err.log(f"{label}")  # a line per configuration: readable in logs, not only on a terminal
                bar.update(task, description=f"evaluating: {label}")

            report = Evaluator(Engine(base, loaded), rewards, prompts, config, progress=progress, cache=run_cache).run()
        if run_cache is not None:
            err.print(f"{run_cache.hits} stored runs reused from {run_cache.directory}")
    except PersonalizeError as exc:
        raise _fail(exc) from exc
    table = markdown_table(report)
    console.print(table, markup=False, highlight=False)
    if json_out:
        json_out.write_text(json.dumps(report.to_json(), indent=2))
    if markdown:
        markdown.write_text(table)
    if plot:
        from personalize.plots import plot_report

        plot_report(report, plot)
    if compute_plot:
        from personalize.plots import plot_reward_vs_compute

        plot_reward_vs_compute(report, compute_plot)


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: PERSONALIZE_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PERSONALIZE_PORT or 8000).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the OpenAI-compatible API (one process: one model, one batching decoder)."""
    # Imported by name: the library must not import the web layer (import-linter checks it).
    importlib.import_module("app.cli_commands").serve(host=host, port=port, log_level=log_level)


@app.command("ui")
def ui(
    api_url: Annotated[str, typer.Option("--api-url", help="The service the UI talks to.")] = "http://127.0.0.1:8000",
    host: Annotated[str, typer.Option(help="Bind address of the UI.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 8501,
) -> None:
    """Serve the Streamlit UI (it talks to the API over HTTP only)."""
    import os
    import subprocess

    from personalize.demo import streamlit_argv

    env = {**os.environ, "PERSONALIZE_API_URL": api_url}
    argv = streamlit_argv(host, port)
    raise typer.Exit(subprocess.call(argv, env=env))


@app.command()
def demo(
    base_model: BaseModelOpt = None,
    heads: HeadsOpt = None,
    host: Annotated[str, typer.Option(help="Bind address of the API and the UI.")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option("--api-port", help="Port of the API.")] = 8000,
    ui_port: Annotated[int, typer.Option("--ui-port", help="Port of the UI.")] = 8501,
    prepare_only: Annotated[
        bool, typer.Option("--prepare-only", help="Set everything up and print the keys; start no server.")
    ] = False,
    users: Annotated[
        bool, typer.Option("--users/--no-users", help="Create the demo users (--no-users: heads only, no keys).")
    ] = True,
) -> None:
    """Prepare the embedded default (model cache, database, heads, demo users), then serve the API and the UI
    until Ctrl-C."""
    from personalize.demo import DemoConfig, DemoSetup, prepare_demo, run_demo
    from personalize.heads import SHIPPED_HEADS_DIR

    settings = _settings()
    if base_model:
        settings = settings.model_copy(update={"base_model": base_model})
    folders = list(heads) if heads else [SHIPPED_HEADS_DIR, settings.data_dir / "heads"]
    console.print(f"data directory: {settings.data_dir}")

    def say(message: str) -> None:
        console.print(message, soft_wrap=True)

    def report(setup: DemoSetup) -> None:
        keys = setup.keys
        console.print(f"database ready: {settings.database_url}")
        for label, names in (("registered", setup.registered), ("already registered", setup.present)):
            if names:
                console.print(f"heads {label}: {', '.join(names)}")
        if not setup.registered and not setup.present:
            console.print("[yellow]no heads found: the UI works without sliders until an admin uploads one[/yellow]")
        for folder, reason in setup.skipped.items():
            err.print(f"[yellow]skipped head {folder}: {reason}[/yellow]")
        if keys is None:
            console.print("no demo users created: make users with `personalize users create NAME [--admin]`")
            return
        origin = "stored keys reused" if setup.keys_reused else "created (keys stored for the next run)"
        console.print(f"demo users {origin} in {settings.data_dir / 'demo-keys.json'}:")
        console.print(f"  user  [bold]{keys.user_name}[/bold]  API key: [bold]{keys.user_key}[/bold]", soft_wrap=True)
        console.print(f"  admin [bold]{keys.admin_name}[/bold]  API key: [bold]{keys.admin_key}[/bold]", soft_wrap=True)

    try:
        if prepare_only:
            report(prepare_demo(settings, folders, say, users=users))
            return
        if not users:
            raise typer.BadParameter("--no-users goes with --prepare-only (the demo servers need the demo users)")
        config = DemoConfig(host=host, api_port=api_port, ui_port=ui_port)
        run_demo(settings, config, folders, say, on_setup=report)
    except PersonalizeError as exc:
        raise _fail(exc) from exc


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars on every start are noise; ours say what happens
    app()


if __name__ == "__main__":
    main()
