"""Kept duel answers hold bounded memory per user: a user who duels on ever new prompts keeps answers to at
most PROMPTS_PER_USER of them, in Redis (one hash per user) and in this process alike."""

from __future__ import annotations

from app.cache import Cache
from app.duel_memory import PROMPTS_PER_USER, DuelMemory, KeptAnswer, KeptDuels
from tests.integration.conftest import Backend

HEADS = (("concise", "v1"),)


def test_a_user_keeps_answers_to_a_bounded_number_of_prompts(backend: Backend) -> None:
    memory = DuelMemory(Cache(backend.redis_url, prefix=backend.redis_prefix), keep=4, ttl_s=60)
    entry = KeptDuels(HEADS, (KeptAnswer("An answer.", "stop", {}, {}, (1.0,)),))
    prompts = [f"Question {i}?" for i in range(PROMPTS_PER_USER + 6)]
    for prompt in prompts:
        memory.store("ann", prompt, entry)
    memory.store("bob", prompts[0], entry)
    kept = [p for p in prompts if memory.load("ann", p, HEADS).answers]
    assert len(kept) == PROMPTS_PER_USER and prompts[-1] in kept  # the newest is never the one dropped
    if backend.redis_url is None:
        assert kept == prompts[6:]  # in this process the oldest go first (in Redis, drawn at random)
    assert memory.load("bob", prompts[0], HEADS) == entry  # another user's entries are their own
