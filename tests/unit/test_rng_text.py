"""Counter-based sampling randomness and streamed text."""

from __future__ import annotations

import torch

from personalize.decoding.rng import derive_seed, splitmix64, splitmix64_reference, uniforms
from personalize.decoding.sampling import sample_tokens
from personalize.decoding.text import TextStream
from personalize.models import BaseModel


def test_tensor_splitmix_matches_integer_reference() -> None:
    values = [0, 1, 2, 12345, 2**31 - 1, 2**62 + 17, 2**63 - 1]
    got = splitmix64(torch.tensor(values, dtype=torch.int64)).tolist()
    want = [splitmix64_reference(v) for v in values]
    assert [g & (2**64 - 1) for g in got] == want


def test_uniforms_are_per_row_and_look_uniform() -> None:
    seeds = torch.arange(20000, dtype=torch.int64)
    u = uniforms(seeds, step=3)
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.std()) - (1 / 12) ** 0.5) < 0.01
    # a row's draw does not depend on its neighbours
    assert torch.equal(uniforms(seeds[5:6], 3), u[5:6])
    assert not torch.equal(uniforms(seeds, 4), u)
    assert derive_seed(1, 0) != derive_seed(1, 1) and derive_seed(1, 0) >= 0


def test_sampling_follows_the_distribution() -> None:
    scores = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).repeat(30000, 1)
    u = uniforms(torch.arange(30000, dtype=torch.int64), 0)
    ones = torch.ones(30000)
    picks = sample_tokens(scores, ones, ones, u, use_top_p=False)
    freq = torch.bincount(picks, minlength=3).float() / 30000
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.015)
    # top_p = 0.7 keeps the two most likely tokens only (0.6 + 0.3 reaches it)
    nucleus = sample_tokens(scores, ones, ones * 0.7, u, use_top_p=True)
    assert int((nucleus == 0).sum()) == 0
    # temperature 0 is greedy
    assert torch.all(sample_tokens(scores, ones * 0, ones, u, use_top_p=False) == 1)


def test_text_stream_deltas_add_up_and_stop_strings_cut(tiny_base: BaseModel) -> None:
    text = "Turn it over and shake it gently. Then wipe."
    ids = tiny_base.tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tiny_base.tokenizer)
    out = "".join(stream.push(t) for t in ids) + stream.finish()
    assert out == text
    stopping = TextStream(tiny_base.tokenizer, stop=("gently",))
    shown = ""
    for t in ids:
        shown += stopping.push(t)
        if stopping.stopped:
            break
    shown += stopping.finish()
    assert stopping.stopped and shown == "Turn it over and shake it "
    assert "gent" not in shown


def test_text_stream_waits_for_complete_characters(tiny_base: BaseModel) -> None:
    text = "café ☕ naïve"
    ids = tiny_base.tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tiny_base.tokenizer)
    deltas = [stream.push(t) for t in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + stream.finish() == text


def test_sampling_top_k_filter() -> None:
    from personalize.decoding.sampling import filter_top_k

    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0], [0.0, 3.0, 1.0, 2.0], [0.0, 3.0, 1.0, 2.0]])
    out = filter_top_k(scores, torch.tensor([1, 2, 0]), 2)
    assert torch.isinf(out[0]).tolist() == [True, False, True, True]
    assert torch.isinf(out[1]).tolist() == [True, False, True, False]
    assert torch.equal(out[2], scores[2])  # 0 = no filter
    u = uniforms(torch.arange(500, dtype=torch.int64), 1)
    ones = torch.ones(500)
    picks = sample_tokens(filter_top_k(scores[:1].repeat(500, 1), ones.long() * 2, 2), ones, ones, u, use_top_p=False)
    assert set(picks.tolist()) == {1, 3}
