"""Text heuristics shared by the reward families: token counts, "is this a real answer" checks.

All functions are pure and deterministic, and work on any Unicode text (CJK characters
count as one token each; the word lists are English, so the checks that use them
simply do not fire on other languages).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# CJK, kana and hangul have no spaces: count each character as a token.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")

# Words that carry no answer on their own: function words, and the filler a model
# uses to announce an answer without giving it ("Sure! Here's how to ...").


def word_set(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text`` (for word lists written as prose)."""
    return frozenset(text.split())


_FILLER_WORDS = word_set(
    """
    a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each either else etc
    even ever every few for from further get gets getting go goes going got had has have having
    he her here here's heres hers herself him himself his how however i i'd i'll i'm i've if in
    into is isn't it it's its itself just let let's lets like make many may me might more most
    much must my myself need no nor not now of off on once one only or other our ours ourselves
    out over own please quite rather really same shall she should so some such than that that's
    the their theirs them themselves then there there's these they this those through to too
    under until up upon us very was we well were what what's when where which while who whom
    whose why will with would yes yet you you'd you'll you're you've your yours yourself
    yourselves sure certainly absolutely course okay ok great good happy glad help helps
    follow following follows below steps step ways way tips tip guide answer answers question
    questions simple simply easy easily quick quickly basic basically properly correctly best
    thing things something anything everything some overview explanation explain explained
    """
)

# A response that ends on one of these has stopped mid-sentence.
_DANGLING_WORDS = word_set(
    """
    a an the and or but nor to of with for in on at by from as like such including include
    includes is are was were be because that which who then so your my our their its if when
    than into onto via e.g i.e namely especially particularly plus
    """
)
_DANGLING_END_CHARS = tuple(":;,([{-–—/&=…")
# A last line that is only a list marker ("2.", "b)", "-"), after other lines.
_LIST_MARKER_LINE = re.compile(r"^\s*(?:\d+[.)]|[a-z][.)]|[-*•+])\s*$")
_HEADING_LINE = re.compile(r"^\s*#{1,6}\s")
# A last sentence that announces content and then ends ("Here's how to do it.").
_ANNOUNCEMENT = re.compile(
    r"^(?:sure[,!.]?\s*|certainly[,!.]?\s*|of course[,!.]?\s*|okay[,!.]?\s*)*"
    r"(?:here(?:'s|’s| is| are)|follow these|these are the|the following|below (?:is|are)"
    r"|the steps are|let me (?:explain|show|tell)|let's (?:start|begin|go))\b",
    re.IGNORECASE,
)
_ANNOUNCEMENT_MAX_WORDS = 14
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_TERMINAL = (*".!?\"'”’)]}`*…。！？",)

_REFUSAL = re.compile(
    r"\b(?:"
    r"i\s*(?:can(?:no|')t|cannot|can\s+not|won't|will\s+not|am\s+(?:not\s+able|unable)"
    r"|'m\s+(?:not\s+able|unable)|must\s+(?:decline|refuse)|do\s+not\s+feel\s+comfortable"
    r"|don't\s+feel\s+comfortable)\s+(?:help|assist|provide|do|answer|comply|fulfil|fulfill"
    r"|create|write|generate|support|share|give|engage|respond|continue|discuss)"
    r"|i'm\s+(?:sorry|afraid),?\s+(?:but\s+)?i\s+(?:can(?:no|')t|cannot|won't|am\s+unable)"
    r"|as\s+an?\s+(?:ai|artificial\s+intelligence|language\s+model|large\s+language\s+model"
    r"|ai\s+(?:language\s+)?model|ai\s+assistant|assistant)\b"
    r"|i'm\s+(?:just|only)\s+an?\s+(?:ai|language\s+model|bot|program)"
    r"|i\s+(?:do\s+not|don't)\s+have\s+(?:personal\s+)?(?:opinions|feelings|the\s+ability)"
    r"|(?:that|this)\s+(?:request\s+)?(?:is|goes)\s+(?:against|beyond)\s+my"
    r")",
    re.IGNORECASE,
)


def _normalise_quotes(text: str) -> str:
    return text.replace("’", "'").replace("‘", "'")


def count_tokens(texts: Sequence[str], tokenizer: Any = None) -> list[int]:
    """Token count of each text: with ``tokenizer`` (a Hugging Face tokenizer) if given,
    else a regex count of words, punctuation marks and CJK characters."""
    if tokenizer is not None:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(row) for row in ids]
    return [len(_TOKEN_RE.findall(text)) for text in texts]


def is_blank(text: str) -> bool:
    """True for an empty or whitespace-only text (including zero-width spaces)."""
    return not text.replace("\u200b", "").replace("\ufeff", "").strip()


def _last_sentence(text: str) -> str:
    parts = [p.strip() for p in _SENTENCE_SPLIT.split(text.strip()) if p.strip()]
    return parts[-1] if parts else ""


def is_dangling(text: str) -> bool:
    """True when the text stops where an answer should start or continue.

    Catches a trailing colon or other joining punctuation ("Here's how to clean it:"),
    a trailing list marker or heading ("1. Unplug it.\\n2."), a last word that needs a
    continuation ("... and the"), and a last sentence that only announces content
    ("Here's how to clean your keyboard."). A blank text is dangling too.
    """
    stripped = _normalise_quotes(text).strip()
    if is_blank(stripped):
        return True
    if stripped.endswith(_DANGLING_END_CHARS) or stripped.endswith(".."):
        return True
    lines = stripped.splitlines()
    if _HEADING_LINE.match(lines[-1]) or (len(lines) > 1 and _LIST_MARKER_LINE.match(lines[-1])):
        return True
    words = _WORD_RE.findall(stripped.lower())
    if words and words[-1] in _DANGLING_WORDS and not stripped.endswith(_TERMINAL):
        return True
    return _is_announcement(_last_sentence(stripped))


def _is_announcement(sentence: str) -> bool:
    """A short sentence that only promises content ("Here are some tips for sleeping.")."""
    if ":" in sentence or any(ch.isdigit() for ch in sentence):
        return False
    return len(_WORD_RE.findall(sentence)) <= _ANNOUNCEMENT_MAX_WORDS and bool(_ANNOUNCEMENT.match(sentence))


def ends_cleanly(text: str) -> bool:
    """True when the text ends with sentence-final punctuation, a quote/bracket or an emoji.

    False for a response cut mid-sentence (e.g. by the token limit).
    """
    stripped = text.strip()
    if not stripped:
        return False
    last = stripped[-1]
    return stripped.endswith(_TERMINAL) or not (last.isalnum() or last in ",;:-")


def is_refusal(text: str) -> bool:
    """True when the text refuses or hides behind being an AI ("I can't help with that",
    "As an AI language model, ...")."""
    return bool(_REFUSAL.search(_normalise_quotes(text)))


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` that are not filler or function words."""
    words = _WORD_RE.findall(_normalise_quotes(text).lower())
    return {w for w in words if w not in _FILLER_WORDS}


def novel_word_count(prompt: str, response: str) -> int:
    """How many content words the response adds beyond the prompt's own words.

    Zero for an empty answer, for an echo of the question and for pure filler
    ("Sure! Here's how to clean your keyboard.").
    """
    prompt_words = content_words(prompt)
    novel = {w for w in content_words(response) if w not in prompt_words and w.rstrip("s") not in prompt_words}
    return len(novel)
