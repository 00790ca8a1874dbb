"""``personalize eval``: every method on the eval prompts (or a prompts file), scored by every objective.

Reads its options into an :class:`personalize.evaluation.EvalConfig`, runs the
:class:`personalize.evaluation.Evaluator` with stored runs from the artifact store, and writes the
report as a table, JSON and figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personalize.commands.options import (
    BaseModelOpt,
    HeadsOpt,
    PromptsOpt,
    RemoteModelOpt,
    RemoteUrlOpt,
    build_engine,
    console,
    err,
    fail,
    import_head_rewards,
    load_base,
    load_heads,
    parse_floats,
    parse_pairs,
    settings,
    with_remote,
)
from personalize.decoding.config import AISPParams, IVGParams
from personalize.errors import ConfigError, PersonalizeError

if TYPE_CHECKING:
    from personalize.evaluation import EvalConfig, EvalReport
    from personalize.settings import Settings

_IVG, _AISP = IVGParams(), AISPParams()
IVG_DEFAULT = f"{_IVG.candidates},{_IVG.chunk_tokens},{_IVG.beams}"

SweepOpt = Annotated[
    list[str] | None,
    typer.Option(help="Two objectives to sweep the weight between ('a,b'); repeat for more sweeps, '' for none."),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        help="Store every decoding run here and reuse stored runs (default: DATA_DIR/eval-cache); "
        "an extended or interrupted evaluation decodes only what is new."
    ),
]


def _sweeps(sweep: list[str] | None) -> tuple[tuple[str, str], ...]:
    pairs = [tuple(x.strip() for x in text.split(",") if x.strip()) for text in sweep or ["concise,helpful"]]
    pairs = [pair for pair in pairs if pair]
    bad = [",".join(pair) for pair in pairs if len(pair) != 2]
    if bad:
        raise ConfigError(f"--sweep takes two objectives as 'a,b', got {bad}")
    return tuple((a, b) for a, b in pairs)


def _write(report: EvalReport, outputs: dict[str, Path | None]) -> None:
    """The table on stdout, and each output asked for."""
    from personalize.evaluation import markdown_table

    table = markdown_table(report)
    console.print(table, markup=False, highlight=False)
    if outputs["json"]:
        outputs["json"].write_text(json.dumps(report.to_json(), indent=2))
    if outputs["markdown"]:
        outputs["markdown"].write_text(table)
    if outputs["plot"]:
        from personalize.plots import plot_report

        plot_report(report, outputs["plot"])
    if outputs["compute_plot"]:
        from personalize.plots import plot_reward_vs_compute

        plot_reward_vs_compute(report, outputs["compute_plot"])


def _evaluate(
    config: EvalConfig,
    base_model: str | None,
    heads: list[Path] | None,
    prompts: list[Any],
    cache: Path | None,
    store_runs: bool,
    data: Settings,
) -> EvalReport:
    """Load the model, the heads and their rewards, and run the evaluation with progress on stderr.

    With a remote base model nothing is stored or reused: stored runs are keyed by the local backbone."""
    from personalize.evaluation import Evaluator
    from personalize.progress import progress_bar
    from personalize.rewards import get_reward
    from personalize.store import ArtifactStore

    base = load_base(data, base_model)
    loaded, missing = load_heads(base, set(config.objectives) | set(config.implicit.values()), heads, data.data_dir)
    if missing:
        raise typer.BadParameter(f"no head found for {missing}; pass --heads")
    import_head_rewards(loaded)
    by_objective = {h.objective: h.meta.reward_name for h in loaded}
    rewards = {name: get_reward(by_objective[name]) for name in config.objectives}  # the reward each head names
    run_cache = ArtifactStore(data.data_dir).runs(cache) if store_runs and not data.remote_url else None
    with progress_bar(err) as bar:
        task = bar.add_task("evaluating", total=None)

        def progress(label: str) -> None:
            err.log(f"{label}")  # a line per configuration: readable in logs, not only on a terminal
            bar.update(task, description=f"evaluating: {label}")

        engine = build_engine(data, base, loaded)
        report = Evaluator(engine, rewards, prompts, config, progress=progress, cache=run_cache).run()
    if run_cache is not None:
        err.print(f"{run_cache.hits} stored runs reused from {run_cache.directory}")
    return report


def evaluate(
    objectives: Annotated[str, typer.Option(help="Objectives to evaluate (heads and rewards of the same names).")] = (
        "concise,helpful,harmless,positive"
    ),
    betas: Annotated[str, typer.Option(help="VAS betas.")] = "1,2,4",
    bon: Annotated[str, typer.Option(help="Best-of-N sizes.")] = "1,2,4,8,16",
    ivg: Annotated[str, typer.Option(help="ivg candidates,chunk_tokens,beams (C,L,B), or '' to skip.")] = IVG_DEFAULT,
    ivg_beta: Annotated[float, typer.Option("--ivg-beta", help="ivg: strength of the implicit heads.")] = 1.0,
    implicit: Annotated[
        str, typer.Option(help="ivg token level: objective=implicit-head pairs, e.g. concise=concise-sft.")
    ] = "",
    aisp_samples: Annotated[str, typer.Option("--aisp-samples", help="aisp N values, or '' to skip.")] = "2,4",
    aisp_iterations: Annotated[int, typer.Option("--aisp-iterations", help="aisp I.")] = _AISP.iterations,
    aisp_sigma: Annotated[float, typer.Option("--aisp-sigma", help="aisp noise std.")] = _AISP.sigma,
    aisp_lam: Annotated[float, typer.Option("--aisp-lam", help="aisp importance temperature.")] = _AISP.lam,
    sweep: SweepOpt = None,
    sweep_steps: Annotated[int, typer.Option("--sweep-steps")] = 5,
    sweep_beta: Annotated[float, typer.Option("--sweep-beta")] = 2.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    prompts: PromptsOpt = None,
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
    cache: CacheOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode everything; store nothing.")] = False,
    base_model: BaseModelOpt = None,
    heads: HeadsOpt = None,
    remote_url: RemoteUrlOpt = None,
    remote_model: RemoteModelOpt = None,
) -> None:
    """Compare base, VAS, Best-of-N, IVG and AISP on the eval prompts; write JSON, a Markdown table and plots."""
    from personalize.data import select_prompts
    from personalize.evaluation import EvalConfig

    try:
        config = EvalConfig(
            objectives=tuple(x.strip() for x in objectives.split(",") if x.strip()),
            betas=parse_floats("--betas", betas),
            bon_sizes=tuple(int(x) for x in parse_floats("--bon", bon)),
            sweeps=_sweeps(sweep),
            sweep_steps=sweep_steps,
            sweep_beta=sweep_beta,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            latency_prompts=latency_prompts,
            seed=seed,
            ivg=IVGParams(*(int(x) for x in parse_floats("--ivg", ivg))) if ivg.strip() else None,
            ivg_beta=ivg_beta,
            implicit=parse_pairs(implicit),
            aisp_samples=tuple(int(x) for x in parse_floats("--aisp-samples", aisp_samples)),
            aisp=AISPParams(sigma=aisp_sigma, lam=aisp_lam, iterations=aisp_iterations),
        )
        chosen = select_prompts(prompts, "eval", limit)
        data = with_remote(settings(), remote_url, remote_model)
        report = _evaluate(config, base_model, heads, chosen, cache, store_runs=not no_cache, data=data)
    except PersonalizeError as exc:
        raise fail(exc) from exc
    _write(report, {"json": json_out, "markdown": markdown, "plot": plot, "compute_plot": compute_plot})
