"""Log-probabilities in OpenAI's shapes: ``choices[].logprobs`` of chat and of text completions.

What is reported (the decoder's :class:`personalize.decoding.config.TokenLogprob`): each sampled token's
log-probability under the distribution it was drawn from — the final, value-guided scores of its method
with the sampling top-k and the temperature applied (temperature 0 reports temperature 1), before top-p —
and the most likely alternatives at its position under the same distribution. Per method: ``base`` the
model's own; ``vas`` the steered scores; ``ivg`` the scores its implicit heads steer; ``bon`` and ``aisp``
the returned sample's own distribution (base, or perturbed for aisp); a remote base model's, the target p
over the upstream's top-k. An end-of-sequence token is not part of the text and is not listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from personalize.decoding.config import TokenLogprob


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), inverted: char -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def token_bytes(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bytes:
    """The bytes a token stands for (exact for byte-level BPE; its decoded text otherwise)."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    table = _byte_alphabet()
    if isinstance(piece, str) and piece and all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return str(tokenizer.decode([token_id])).encode("utf-8")


def _token(tokenizer: PreTrainedTokenizerBase, token_id: int) -> tuple[str, list[int]]:
    raw = token_bytes(tokenizer, token_id)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(tokenizer: PreTrainedTokenizerBase, entries: Sequence[TokenLogprob], top: int) -> dict[str, Any]:
    """``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}...], "refusal": null}``."""
    content = []
    for entry in entries:
        text, raw = _token(tokenizer, entry.token_id)
        alternatives = []
        for token_id, logprob in entry.top[:top]:
            alt_text, alt_raw = _token(tokenizer, token_id)
            alternatives.append({"token": alt_text, "logprob": logprob, "bytes": alt_raw})
        content.append({"token": text, "logprob": entry.logprob, "bytes": raw, "top_logprobs": alternatives})
    return {"content": content, "refusal": None}


def text_logprobs(
    tokenizer: PreTrainedTokenizerBase, entries: Sequence[TokenLogprob], top: int, offset: int = 0
) -> dict[str, Any]:
    """``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (legacy completions), offsets counted
    in characters from ``offset`` (where this chunk's text starts in the completion)."""
    tokens, logprobs, tops, offsets = [], [], [], []
    for entry in entries:
        text, _ = _token(tokenizer, entry.token_id)
        tokens.append(text)
        logprobs.append(entry.logprob)
        tops.append({_token(tokenizer, t)[0]: lp for t, lp in entry.top[:top]})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops if top else None, "text_offset": offsets}
