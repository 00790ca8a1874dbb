"""A team's own reward: how formal a response reads, from 0 (chatty) to 1 (formal).

``personalize heads train --reward formality:score`` imports this module (from the current
folder) and calls ``score`` with a batch of prompts and responses; it returns one number per
response.
"""

from __future__ import annotations

import re

INFORMAL = {
    "hey", "hi", "yeah", "yep", "nope", "cool", "awesome", "gonna", "wanna", "gotta", "kinda", "sorta",
    "stuff", "lol", "guys", "ok", "okay", "super", "totally", "basically", "pretty", "btw",
}  # fmt: skip
CONTRACTION = re.compile(r"\b\w+'(?:s|re|ve|ll|d|t|m)\b", re.IGNORECASE)
WORD = re.compile(r"[A-Za-z']+")


def formality(text: str) -> float:
    """Half for sentences that start with a capital letter, half for few informal markers."""
    words = WORD.findall(text)
    if not words:
        return 0.0
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
    capitalised = sum(s[0].isupper() for s in sentences) / len(sentences)
    informal = sum(w.lower() in INFORMAL for w in words) + len(CONTRACTION.findall(text)) + text.count("!")
    return 0.5 * capitalised + 0.5 * max(0.0, 1.0 - 10.0 * informal / len(words))


def score(prompts: list[str], responses: list[str]) -> list[float]:
    return [formality(response) for response in responses]
