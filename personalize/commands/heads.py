"""``personalize heads list|train``: the heads found on disk, and training a new one.

``heads train`` only reads its options into a :class:`personalize.training.TrainJob` and runs
:func:`personalize.training.train`; everything else is the library's.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from personalize.commands.options import (
    BaseModelOpt,
    HeadsOpt,
    PromptsOpt,
    console,
    err,
    fail,
    head_dirs,
    load_base,
    load_heads,
    parse_floats,
    parse_weights,
    reward_from_option,
    settings,
)
from personalize.errors import PersonalizeError

heads_app = typer.Typer(help="Value heads: train, list.", no_args_is_help=True)

LIST_COLUMNS = ("objective", "version", "kind", "steer", "backbone_id", "reward", "scale", "size_mb", "path")


def _row(folder: Path) -> dict[str, Any] | None:
    from personalize.heads import load_head

    try:
        meta = load_head(folder).meta
    except PersonalizeError as exc:
        err.print(f"[yellow]skipping {folder}: {exc}[/yellow]")
        return None
    size = sum(p.stat().st_size for p in folder.iterdir())
    return {
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


@heads_app.command("list")
def heads_list(
    heads: HeadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List head directories and their metadata (no model is loaded)."""
    import json

    rows = [r for r in (_row(f) for f in head_dirs(heads, settings().data_dir)) if r is not None]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("objective", "version", "kind", "steer", "backbone", "reward", "scale", "MB", "path")
    for r in rows:
        table.add_row(*(str(r[k]) for k in LIST_COLUMNS))
    console.print(table if rows else "no heads found")


KindOpt = Annotated[
    str,
    typer.Option(
        help="lora (adapter + extra decode row), linear (free at decode), or implicit "
        "(an adapter fine-tuned on the best rollouts: ivg's token-level guidance)."
    ),
]
ShapingOpt = Annotated[
    str,
    typer.Option(
        help="lora/linear: reward per action. none: the final reward on the last token; sentence: "
        "the change in the reward of the response so far at each sentence or line end; token: at every token. "
        "A reward with a prefix_score (helpful) scores the unfinished text with it."
    ),
]
RolloutWeightsOpt = Annotated[
    str,
    typer.Option(
        "--rollout-weights",
        help="Sample the rollouts from the base model steered by these heads (VAS), e.g. helpful=1: "
        "a second round, whose values are those of the steered policy. '' (default): the plain base model.",
    ),
]
WithBaseOpt = Annotated[
    bool,
    typer.Option(
        "--with-base-rollouts",
        help="With --rollout-weights: train on the base model's rollouts as well as the steered ones "
        "(both sampled, or reused, with the same prompts and settings).",
    ),
]
InitOpt = Annotated[
    Path | None,
    typer.Option(
        "--init", help="Warm-start from this trained head (same kind, value rank and LoRA shape) instead of from zero."
    ),
]
BudgetOpt = Annotated[
    str,
    typer.Option(
        "--budget-scales",
        help="lora/linear: make the head aware of the tokens left before --max-new-tokens, through "
        "features exp(-left / scale) with these decay lengths in tokens, e.g. 1,4,16,64 ('' : off).",
    ),
]
PenaltyOpt = Annotated[
    float,
    typer.Option(
        "--unfinished-penalty",
        help="lora/linear/implicit: charge every rollout that stops mid-sentence (cut by --max-new-tokens "
        "or not) this much reward, in training only (the reward and the evaluation are unchanged), so the "
        "head learns to finish within the limit. 0: off.",
    ),
]
StopOpt = Annotated[
    bool,
    typer.Option(
        "--stop-option",
        help="lora/linear: value ending the answer at every sentence end of the rollouts (the reward of "
        "the answer ended there, scored once and stored), and learn the returns of the policy that ends "
        "it there when that beats the prompt's expected reward, rather than those of the base model's "
        "continuation alone.",
    ),
]
SteerOpt = Annotated[
    str,
    typer.Option(
        "--steer",
        help="What the head steers at decode time: 'all' top-k candidates, or only the end-of-answer "
        "tokens ('end': a stopping head that leaves what the answer says to the base model and decides "
        "where it ends; pairs with --stop-option).",
    ),
]
RewardOpt = Annotated[
    str,
    typer.Option(
        help="The reward: a registered name (concise, helpful, ...), hf:<local model dir>, a name an installed "
        "package publishes (entry-point group personalize.rewards), or module:function (imported; the current "
        "directory is searched; called with lists of prompts and responses, returns one number per response)."
    ),
]


@heads_app.command("train")
def heads_train(
    objective: Annotated[str, typer.Option(help="Objective name the head serves (e.g. concise).")],
    reward: RewardOpt,
    out: Annotated[Path, typer.Option(help="Directory to write the head to.")],
    kind: KindOpt = "lora",
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
    prompts: PromptsOpt = None,
    limit: Annotated[int, typer.Option(help="Use only the first N training prompts (0: all).")] = 0,
    shaping: ShapingOpt = "none",
    seed: Annotated[int, typer.Option()] = 0,
    version: Annotated[str, typer.Option()] = "1",
    description: Annotated[str, typer.Option()] = "",
    rollout_weights: RolloutWeightsOpt = "",
    rollout_beta: Annotated[float, typer.Option("--rollout-beta", help="Beta of the steered rollout policy.")] = 1.0,
    with_base_rollouts: WithBaseOpt = False,
    init: InitOpt = None,
    budget_scales: BudgetOpt = "",
    unfinished_penalty: PenaltyOpt = 0.0,
    stop_option: StopOpt = False,
    steer: SteerOpt = "all",
    heads: HeadsOpt = None,
    base_model: BaseModelOpt = None,
) -> None:
    """Train a head: rollouts (cached, shared by objectives) → reward → TD(lambda) (lora/linear) or SFT (implicit)."""
    from personalize.data import select_prompts
    from personalize.training import RolloutSpec, TrainJob, head_config

    options = {k: v for k, v in locals().items() if k in _HEAD_OPTIONS}
    try:
        head = head_config(
            kind,
            **options,
            lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
            budget_scales=parse_floats("--budget-scales", budget_scales),
        )
        rollouts = RolloutSpec(
            samples_per_prompt,
            max_new_tokens,
            rollout_batch,
            seed,
            steer_weights=parse_weights(rollout_weights),
            steer_beta=rollout_beta,
            with_base=with_base_rollouts,
        )
        reward_from_option(reward)  # a module:function reward is imported here, from the current directory
        command = shlex.join(["personalize", *sys.argv[1:]])  # quoted: copy-pasteable
        job = TrainJob(
            objective=objective,
            reward=reward,
            out=out,
            prompts=select_prompts(prompts, "train", limit),
            head=head,
            rollouts=rollouts,
            version=version,
            description=description,
            init=init,
            command=command,
        )
        _run(job, base_model, heads)
    except PersonalizeError as exc:
        raise fail(exc) from exc


_HEAD_OPTIONS = (
    "epochs", "lr", "head_lr", "batch_size", "gamma", "lam", "lora_rank", "lora_layers", "top_fraction",
    "seed", "unfinished_penalty", "stop_option", "steer", "shaping",
)  # fmt: skip


def _run(job: Any, base_model: str | None, heads: list[Path] | None) -> None:
    """Load the model and the steering heads, train, and say what was made."""
    from personalize.progress import ConsoleReporter
    from personalize.store import ArtifactStore
    from personalize.training import train

    config = settings()
    base = load_base(config, base_model)
    steering: list[Any] = []
    if job.rollouts.steer_weights:
        steering, _ = load_heads(base, set(job.rollouts.steer_weights), heads, config.data_dir)
    store = ArtifactStore(config.data_dir, ConsoleReporter(console, err))
    result = train(job, base, store=store, steering=steering)
    report = result.report
    console.print(
        f"head {job.objective!r} v{job.version} → {job.out}  losses {[round(x, 4) for x in report.epoch_losses]}  "
        f"return {report.return_mean:.3f}±{report.return_std:.3f}  scale {report.scale:.4f}  {report.seconds:.0f}s"
    )
