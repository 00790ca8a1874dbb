"""``personalize generate``: one answer, steered by objective weights, from the command line."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from personalize.commands.method_options import MethodValues, with_method_options
from personalize.commands.options import (
    BaseModelOpt,
    HeadsOpt,
    RemoteModelOpt,
    RemoteUrlOpt,
    build_engine,
    console,
    err,
    fail,
    import_head_rewards,
    load_base,
    load_heads,
    parse_weights,
    settings,
    with_remote,
)
from personalize.errors import PersonalizeError

if TYPE_CHECKING:
    from personalize.decoding import GenerationRequest, GenerationResult, Personalization


def _personalization(weights: str, beta: float, method: str, top_k: int, values: MethodValues) -> Personalization:
    from personalize.decoding import Personalization

    options: dict[str, Any] = {m: v for m, v in values.items() if m != "bon"}  # mappings the dataclasses check
    if "best_of" in values.get("bon", {}):
        options["best_of"] = int(values["bon"]["best_of"])
    return Personalization(parse_weights(weights), beta=beta, method=method, top_k=top_k, **options)


def _run(engine: Any, request: GenerationRequest, as_json: bool) -> GenerationResult | None:
    """Print the answer (streamed when the method allows it); the result when one was made whole."""
    from personalize.decoding.methods import streams

    if as_json or not streams(request):  # bon, aisp and ivg search have no answer before the end
        [result] = engine.generate([request])
        if not as_json:
            console.print(result.text, markup=False, highlight=False)
        return result  # type: ignore[no-any-return]
    for event in engine.stream([request]):
        console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
    console.print()
    return None


def _as_json(result: GenerationResult, personalization: Personalization, extra: dict[str, Any]) -> str:
    out = {
        "text": result.text,
        "completion_tokens": result.completion_tokens,
        "prompt_tokens": result.prompt_tokens,
        "finish_reason": result.finish_reason,
        **personalization.to_dict(),
        "head_versions": dict(result.head_versions),
        **extra,
        "forward_rows": result.forward_rows,
        "compute": asdict(result.compute),
        "reward": result.reward,
    }
    return json.dumps(out, ensure_ascii=False)


@with_method_options
def generate(
    prompt: Annotated[str, typer.Argument(help="The user's message.")],
    weights: Annotated[str, typer.Option(help="Objective weights, e.g. concise=1,helpful=0.5.")] = "",
    beta: Annotated[float, typer.Option(help="Overall steering strength.")] = 1.0,
    method: Annotated[str, typer.Option(help="base | vas | bon | ivg | aisp.")] = "vas",
    top_k: Annotated[int, typer.Option("--top-k", help="Candidates re-scored per token.")] = 20,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Same seed, same text.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop string (repeatable).")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    base_model: BaseModelOpt = None,
    heads: HeadsOpt = None,
    remote_url: RemoteUrlOpt = None,
    remote_model: RemoteModelOpt = None,
    *,
    method_values: MethodValues,
) -> None:
    """Generate one answer, steered by the given objective weights."""
    from personalize.decoding import GenerationRequest, SamplingParams

    config = with_remote(settings(), remote_url, remote_model)
    try:
        personalization = _personalization(weights, beta, method, top_k, method_values)
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop or ()), seed=seed
        )
        base = load_base(config, base_model)
        loaded, _ = load_heads(base, set(personalization.weights), heads, config.data_dir)
        if personalization.method in ("bon", "aisp"):
            import_head_rewards(loaded)
        engine = build_engine(config, base, loaded)
        request = GenerationRequest(tuple(base.encode_prompt(prompt, chat=not raw)), sampling, personalization)
        start = time.perf_counter()
        result = _run(engine, request, as_json)
        elapsed = time.perf_counter() - start
    except PersonalizeError as exc:
        raise fail(exc) from exc
    if as_json and result is not None:
        extra = {"seed": seed, "base_model": base.backbone_id, "elapsed_s": round(elapsed, 3)}
        typer.echo(_as_json(result, personalization, extra))
    elif result is not None and result.reward is not None:
        err.print(f"[dim]{method}, {result.compute.samples} samples: reward {result.reward:.3f}[/dim]")
