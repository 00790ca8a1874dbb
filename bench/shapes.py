"""Memory under ever new matrix shapes: random batches through the engine, resident memory as it goes.

    python -m bench.shapes --rounds 75
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=64 LRU_CACHE_CAPACITY=1024 python -m bench.shapes --rounds 75

Each round decodes 1-12 requests at once with prompts of 5-300 words, 4-24 new tokens and 0-3 of
the shipped heads at random weights, so batch widths and prefill chunks take ever new sizes (the
server's situation). Prints the RSS every 25 rounds and the time taken: a process whose kernel
caches are bounded settles; one whose caches keep every shape keeps growing.
"""

from __future__ import annotations

import argparse
import random
import time

from personalize.decoding import Engine, GenerationRequest, Personalization, SamplingParams
from personalize.heads import SHIPPED_HEADS_DIR, discover_heads, load_head
from personalize.models import load_base_model, set_threads
from personalize.settings import Settings

WORDS = (
    *("the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for"),
    *("on", "are", "as", "with", "his", "they", "at", "be", "this", "have", "from"),
)


def rss_mb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def random_batch(engine: Engine, objectives: list[str], rng: random.Random) -> list[GenerationRequest]:
    batch = []
    for _ in range(rng.randint(1, 12)):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 300)))
        weights = {name: rng.uniform(-1, 1) for name in rng.sample(objectives, rng.randint(0, 3))}
        sampling = SamplingParams(max_new_tokens=rng.randint(4, 24), seed=rng.randint(0, 9999))
        prompt = tuple(engine.base.encode_prompt(text))
        batch.append(GenerationRequest(prompt, sampling, Personalization(weights=weights)))
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=75)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    settings = Settings()
    base = load_base_model(settings.base_model, data_dir=settings.data_dir)
    heads = [load_head(folder, base) for folder in discover_heads([SHIPPED_HEADS_DIR])]
    engine = Engine(base, heads)
    objectives = [head.objective for head in heads]
    rng = random.Random(args.seed)
    start = time.perf_counter()
    print(f"start: RSS {rss_mb()} MB", flush=True)
    for done in range(1, args.rounds + 1):
        engine.generate(random_batch(engine, objectives, rng))
        if done % 25 == 0:
            print(f"round {done}: RSS {rss_mb()} MB, {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
