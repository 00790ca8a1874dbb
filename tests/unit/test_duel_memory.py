"""Kept duel answers (app/duel_memory.py) without Redis: per user and prompt, dropped when the heads change
or the entry is too old, capped, and the asked pairs follow the answers kept."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.cache import Cache
from app.duel_memory import DuelMemory, KeptAnswer, KeptDuels

HEADS = (("concise", "v1"), ("positive", "v2"))


def answer(text: str, concise: float = 0.0, positive: float = 0.0) -> KeptAnswer:
    weights = {"concise": concise, "positive": positive}
    return KeptAnswer(text, "stop", {"weights": weights}, {"concise": "v1"}, (concise, positive))


def shown(first: str, second: str) -> tuple[str, str]:
    return answer(first).digest, answer(second).digest


def asked(kept: KeptDuels) -> set[tuple[int, int]]:
    """The asked pairs as sorted index pairs of the kept answers."""
    pairs = kept.asked_pairs([a.digest for a in kept.answers])
    return {(min(i, j), max(i, j)) for i, j in pairs}


def test_kept_answers_come_back_per_user_and_prompt_in_the_objectives_order() -> None:
    memory = DuelMemory(Cache(None), keep=8, ttl_s=60)
    kept = KeptDuels(HEADS).after([answer("a", 1.0, 2.0), answer("b", 3.0, 4.0)], shown("a", "b"), keep=8)
    memory.store("ann", "Hi?", kept)
    back = memory.load("ann", "Hi?", HEADS)
    assert back == kept and asked(back) == {(0, 1)}
    assert back.rewards(["positive", "concise"]).tolist() == [[2.0, 1.0], [4.0, 3.0]]
    assert memory.load("bob", "Hi?", HEADS).answers == ()
    assert memory.load("ann", "Hello?", HEADS).answers == ()
    assert memory.load("ann", "Hi?", (("concise", "v1"), ("positive", "v3"))).answers == ()  # another head version
    memory.forget("ann")
    assert memory.load("ann", "Hi?", HEADS).answers == ()


def test_an_old_entry_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = DuelMemory(Cache(None), keep=8, ttl_s=60)
    memory.store("ann", "Hi?", KeptDuels(HEADS).after([answer("a"), answer("b")], shown("a", "b"), keep=8))
    assert memory.load("ann", "Hi?", HEADS).answers != ()
    now = time.time()
    monkeypatch.setattr("app.duel_memory.time.time", lambda: now + 61)
    assert memory.load("ann", "Hi?", HEADS).answers == ()


def test_the_most_recent_answers_are_kept_with_the_pairs_among_them() -> None:
    kept = KeptDuels(HEADS).after([answer("a"), answer("b")], shown("a", "b"), keep=3)
    kept = kept.after([answer("c"), answer("a")], shown("c", "b"), keep=3)
    assert [a.text for a in kept.answers] == ["b", "c", "a"]  # "a" again: moved to the end, not twice
    assert asked(kept) == {(0, 2), (0, 1)}  # b-a and c-b
    kept = kept.after([answer("d")], shown("d", "c"), keep=3)
    assert [a.text for a in kept.answers] == ["c", "a", "d"]  # "b" dropped, and the pairs with it
    assert asked(kept) == {(0, 2)}
    assert kept.after([answer("e")], shown("e", "d"), keep=0).answers == ()
    assert np.array_equal(KeptDuels(HEADS).rewards(["concise", "positive"]), np.zeros((0, 2)))


def test_nothing_is_kept_when_keeping_is_off() -> None:
    for keep, ttl in ((0, 60.0), (8, 0.0)):
        memory = DuelMemory(Cache(None), keep=keep, ttl_s=ttl)
        memory.store("ann", "Hi?", KeptDuels(HEADS).after([answer("a"), answer("b")], shown("a", "b"), keep=8))
        assert memory.load("ann", "Hi?", HEADS).answers == ()
