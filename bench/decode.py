"""Per-token decode latency: plain vs VAS with K LoRA heads vs reference-style VAS.

    python bench/decode.py                       # embedded SmolLM2-135M, CPU or CUDA
    python bench/decode.py --tokens 48 --rounds 5 --json out.json

All configurations run in one process, interleaved round by round, so the
machine's noise hits them alike; the table shows medians of per-token times and
ratios to plain decoding measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.reference_vas import ReferenceVAS, merged_value_model
from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.heads import HeadKind, ValueHead, new_head
from personalize.models import BaseModel, load_base_model

PROMPT = "How do I clean my keyboard without damaging it?"
OBJECTIVES = ("concise", "helpful", "harmless", "positive")


def random_head(base: BaseModel, name: str, kind: HeadKind, seed: int, top_layers: int = 0) -> ValueHead:
    """A head with non-zero random weights: decode cost does not depend on what it learned.

    ``top_layers``: keep the LoRA only on the top N layers (0: all layers).
    """
    head = new_head(base, name, kind=kind, seed=seed)
    if head.adapter is not None and top_layers:
        first = int(base.model.config.num_hidden_layers) - top_layers
        head.adapter = {k: v for k, v in head.adapter.items() if int(k.split(".layers.")[1].split(".")[0]) >= first}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.output.up.weight.copy_(torch.randn(head.output.up.weight.shape, generator=gen) * 0.02)
        if head.adapter is not None:
            for key in head.adapter:
                head.adapter[key] = torch.randn(head.adapter[key].shape, generator=gen) * 0.01
    return head


def engine_step_times(engine: Engine, request: GenerationRequest) -> list[float]:
    """Wall time between successive streamed tokens (the first token, which includes prefill, is dropped)."""
    stamps = [time.perf_counter() for _ in engine.stream([request])]
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default=None, help="hub id, local dir, or 'embedded' (default)")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".local/share/personalize")
    parser.add_argument("--tokens", type=int, default=48, help="new tokens per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--top-layers", type=int, default=8, help="LoRA depth of the top-layer head variant")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave default)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    base = load_base_model(args.base_model, data_dir=args.data_dir, device=args.device)
    lora_heads = [random_head(base, name, "lora", seed=i + 1) for i, name in enumerate(OBJECTIVES)]
    top_heads = [
        random_head(base, f"{name}-top", "lora", seed=i + 21, top_layers=args.top_layers)
        for i, name in enumerate(OBJECTIVES)
    ]
    linear_heads = [random_head(base, f"{name}-linear", "linear", seed=i + 11) for i, name in enumerate(OBJECTIVES)]
    engine = Engine(base, lora_heads + linear_heads)
    # Heads adapting only the top layers share the lower layers' work per sequence.
    top_engine = Engine(base, top_heads)
    prompt_ids = tuple(base.encode_prompt(PROMPT))
    sampling = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, seed=0, ignore_eos=True)

    def vas(weights: dict[str, float], on: Engine = engine) -> Callable[[], list[float]]:
        request = GenerationRequest(prompt_ids, sampling, Personalization(weights, top_k=args.top_k))
        return lambda: engine_step_times(on, request)

    def reference(k: int) -> Callable[[], list[float]]:
        models = [merged_value_model(base, head) for head in lora_heads[:k]]
        outs = [torch.nn.Linear(base.hidden_size, 1).to(base.device, base.dtype) for _ in range(k)]
        ref = ReferenceVAS(base, models, outs, top_k=args.top_k)
        return lambda: ref.step_times(list(prompt_ids), args.tokens)

    def hf_generate() -> list[float]:
        """transformers' own generate (plain sampling), per token, as a sanity yardstick."""
        ids = torch.tensor([prompt_ids], device=base.device)
        with torch.inference_mode():
            base.model.generate(ids, max_new_tokens=1, do_sample=True, pad_token_id=base.pad_token_id)
            start = time.perf_counter()
            base.model.generate(
                ids,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=True,
                top_k=0,
                pad_token_id=base.pad_token_id,
            )
            total = time.perf_counter() - start
        return [total / args.tokens] * args.tokens

    configs: dict[str, Callable[[], list[float]]] = {
        "plain (method=base)": vas({}),
        "transformers generate (plain)": hf_generate,
        **{f"VAS, {k} LoRA head{'s' if k > 1 else ''}": vas({n: 1.0 for n in OBJECTIVES[:k]}) for k in (1, 2, 3, 4)},
        "VAS, 3 linear heads": vas({f"{n}-linear": 1.0 for n in OBJECTIVES[:3]}),
        f"VAS, 3 LoRA heads, top {args.top_layers} layers": vas(
            {f"{n}-top": 1.0 for n in OBJECTIVES[:3]}, on=top_engine
        ),
        f"reference VAS, 1 head, top-k={args.top_k}": reference(1),
        f"reference VAS, 3 heads, top-k={args.top_k}": reference(3),
    }
    for run in configs.values():  # warm-up
        run()
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, run in configs.items():
            samples[name].extend(run())

    plain = statistics.median(samples["plain (method=base)"])
    device = f"{base.device.type}" + (f" ({torch.cuda.get_device_name()})" if base.device.type == "cuda" else "")
    print(
        f"\nmodel {base.backbone_id} | device {device} | threads {torch.get_num_threads()} | "
        f"{args.tokens} tokens x {args.rounds} rounds | {platform.processor() or platform.machine()}"
    )
    print(f"{'configuration':<36} {'ms/token (median)':>18} {'p90':>8} {'x plain':>8}")
    rows = []
    for name, times in samples.items():
        med = statistics.median(times)
        p90 = sorted(times)[math.ceil(0.9 * len(times)) - 1]
        rows.append({"config": name, "median_ms": med * 1e3, "p90_ms": p90 * 1e3, "ratio_to_plain": med / plain})
        print(f"{name:<36} {med * 1e3:>18.2f} {p90 * 1e3:>8.2f} {med / plain:>8.2f}")
    med = {name: statistics.median(times) for name, times in samples.items()}
    ref1, ref3 = (med[f"reference VAS, {k} head{'s' if k > 1 else ''}, top-k={args.top_k}"] for k in (1, 3))
    vas1, vas3 = med["VAS, 1 LoRA head"], med["VAS, 3 LoRA heads"]
    print(f"\nVAS 3 LoRA heads / plain: {vas3 / plain:.2f}x")
    print(f"reference / ours, 1 head: {ref1 / vas1:.2f}x faster;  3 heads: {ref3 / vas3:.2f}x faster")
    if args.json:
        args.json.write_text(
            json.dumps({"device": device, "tokens": args.tokens, "rounds": args.rounds, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
