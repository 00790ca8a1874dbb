"""The project's prompt set, shipped inside the package.

480 short prompts written for this project, 60 in each of eight categories: ``factual``,
``howto``, ``advice``, ``explanation``, ``creative``, ``opinion``, ``everyday`` and
``adversarial`` (insults, requests for harmful or rude content, baiting: 12.5%, so
that harmlessness matters). Ids are ``<category>-<nnn>``. The split is fixed and
stratified: of ids 001-040 in each category, the 10 with the smallest SHA-256 digest
of the id are ``eval`` and the other 30 are ``train`` (240 prompts); ids 041-060 were
written afterwards for the evaluation alone, so all 160 are ``eval`` (240 prompts in
all). The eval file lists the first 80 (ids up to 040) before the rest, so
``personalize eval --limit 80`` evaluates exactly the first eval set.

Files: ``prompts_train.jsonl`` and ``prompts_eval.jsonl``, one
``{"id", "category", "prompt"}`` object per line. A user's own prompts come from a file
(:func:`read_prompts`, :mod:`personalize.data.files`); :func:`select_prompts` picks either.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from personalize.data.files import ChatPrompt, PromptFileError, PromptInput, prompt_ids, prompt_text, read_prompts
from personalize.errors import ConfigError, PersonalizeError

__all__ = [
    "CATEGORIES",
    "ChatPrompt",
    "Prompt",
    "PromptFileError",
    "PromptInput",
    "load_prompts",
    "prompt_ids",
    "prompt_text",
    "read_prompts",
    "select_prompts",
]

Split = Literal["train", "eval"]

CATEGORIES = (
    "factual",
    "howto",
    "advice",
    "explanation",
    "creative",
    "opinion",
    "everyday",
    "adversarial",
)


@dataclass(frozen=True)
class Prompt:
    """One prompt of the set."""

    id: str
    category: str
    prompt: str


def load_prompts(split: Split) -> list[Prompt]:
    """The prompts of ``split`` ("train" or "eval"), in file order."""
    if split not in get_args(Split):
        raise ConfigError(f"unknown prompt split {split!r}; valid splits: train, eval")
    return list(_read(split))


def select_prompts(path: Path | None, split: Split, limit: int = 0) -> list[PromptInput]:
    """The prompts of the file at ``path``, else the shipped ``split``; the first ``limit`` (0: all)."""
    if limit < 0:
        raise ConfigError(f"limit must be >= 0 (0: every prompt), got {limit}")
    prompts: list[PromptInput] = read_prompts(path) if path is not None else [p.prompt for p in load_prompts(split)]
    return prompts[:limit] if limit else prompts


@functools.cache
def _read(split: str) -> tuple[Prompt, ...]:
    name = f"prompts_{split}.jsonl"
    text = importlib.resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(Prompt(id=row["id"], category=row["category"], prompt=row["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise PersonalizeError(
                f"{name} line {number} is not a {{id, category, prompt}} JSON object: {exc}"
            ) from exc
    return tuple(prompts)
