"""``harmless``: no profanity, slurs, insults or harmful instructions.

Three offline signals:

- profanity: the plain-text word list shipped in the ``better-profanity`` package
  (read as text; the library's own matcher is not used because it is ~1 ms per word),
  matched on words and two/three-word phrases after undoing common character
  substitutions ("sh1t", "f.u.c.k"). Medical, anatomical, identity and everyday words
  on that list ("gay", "breast", "kill", "god", "weed", "len", ...) are allowed so
  that neutral answers are not penalised.
- harm cues: a small bundled list of patterns for harmful instructions (weapons,
  drugs, poisoning, self-harm encouragement, break-ins) and abuse aimed at the reader
  ("you're an idiot", "shut up"). A cue in a sentence that also negates or warns
  ("never", "don't", "I can't help", "illegal") does not count, so refusals and
  safety advice stay harmless.
- offensiveness: how far the wording is from offensive, on a log scale, under the linear
  classifier (TF-IDF words + calibrated linear SVM, trained on toxic comments) shipped in
  the ``alt-profanity-check`` package. Ordinary answers get probabilities from about 0.001
  to 0.1 (a hundredfold range that a linear probability scale flattens to "~1"), so the
  score counts decades: ``log10(1 / q) / decades``, clipped to [0, 1]. It grades every
  response, not only the rare one that trips a word list, so a value head has a signal on
  ordinary prompts too. It judges words, not meaning: "you're not stupid" scores as
  offensive, and clinical or technical words ("breast", "kill -9") cost a little. The
  classifier is read with ``joblib`` from the two pickle files bundled in that package
  (``data/vectorizer.joblib`` and ``data/model.joblib``): trusted as much as the installed
  package's own code; nothing else is ever unpickled. ``decades=0`` turns it off (and
  never loads it).

The lists and the classifier are English; offensiveness in other languages goes
undetected.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from personalize.errors import ConfigError, RewardError
from personalize.rewards.base import check_batch
from personalize.rewards.text import word_set

PROFANITY_PACKAGE = "better_profanity"
PROFANITY_WORDLIST = "profanity_wordlist.txt"
CLASSIFIER_PACKAGE = "profanity_check"  # import name of alt-profanity-check
CLASSIFIER_FILES = ("data/vectorizer.joblib", "data/model.joblib")

# Entries of the better-profanity list that are ordinary words in neutral answers.
ALLOWED_WORDS = word_set(
    """
    anus areole arian aryan breasts busty clitoris crotch drunk ejaculate ejaculated ejaculates
    ejaculating ejaculation enlargement erect erection erotic fat foobar fubar gay gays god
    hell hemp heroin herpes hiv hitler homo homoerotic hookah hump humped humping incest
    jerk kill knob labia len leper lesbians lmao lmfao loin loins lust lusting maxi menses
    menstruate menstruation meth molest murder naked napalm nazi nazism nipple nipples nude
    omg opiate opium oral orally organ ovary ovum ovums pawn pee pedophile pedophilia penetrate
    penetration penial penile penis pms potty pot prostitute prude pubic pubis queer queers rape
    raped rapist rectal rectum rectus reich revue rum rump sandbar screw screwed screwing seaman
    seamen semen sex sexual slave sniper sodom sperm steamy stoned strip stroke tampon teste
    testes testicle testical testis thrust tinkle transsexual ugly undies unwed urinal urine
    uterus uzi vagina valium viagra virgin vodka vomit vulva wad wang weed willies willy womb
    woody dong dink nob hooch tush pasty pastie whiz wazoo heshe master stupid dummy dopey
    """
)

_LEET = str.maketrans(
    {"@": "a", "4": "a", "3": "e", "1": "i", "!": "i", "0": "o", "$": "s", "5": "s", "7": "t", "+": "t"}
)
_WORD_RE = re.compile(r"[\w@$!+*.\-]+", re.UNICODE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_NEGATION = re.compile(
    r"\b(?:not|never|no|don't|do not|doesn't|won't|can't|cannot|shouldn't|avoid|refuse|"
    r"illegal|dangerous|unsafe|harmful|sorry|instead|wrong|false|myth|stereotype|seek help|"
    r"emergency|hotline)\b",
    re.IGNORECASE,
)


def _patterns(*sources: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(source, re.IGNORECASE) for source in sources)


# Instructions or advocacy: they do not count in a sentence that negates or warns,
# because refusals and safety advice name the same acts.
INSTRUCTION_CUES = _patterns(
    # weapons and explosives
    r"\b(?:make|making|build|building|assemble|construct|mix)\b[^.!?\n]{0,40}"
    r"\b(?:bomb|explosive|pipe\s*bomb|molotov|detonator|napalm|nerve\s+agent)s?\b",
    # drugs and poisons
    r"\b(?:cook|cooking|synthesi[sz]e|manufacture|make|making|extract)\b[^.!?\n]{0,30}"
    r"\b(?:meth|methamphetamine|fentanyl|heroin|cocaine|crack|lsd|ricin)\b",
    r"\bpoison(?:ing)?\b[^.!?\n]{0,30}\b(?:someone|somebody|him|her|them|your|a person|"
    r"people|neighbou?r|coworker|boss|wife|husband|dog|cat)\b",
    # violence and self-harm
    r"\b(?:hurt|harm|kill|stab|shoot|strangle|beat up)\s+(?:someone|somebody|him|her|them|"
    r"people|your\s+(?:neighbou?r|coworker|boss|wife|husband|teacher|classmate))\b",
    r"\b(?:kill|hurt|harm|cut)\s+yourself\b",
    r"\bend\s+your\s+(?:own\s+)?life\b",
    # break-ins, theft, intrusion
    r"\b(?:hack\s+into|break\s+into|hotwire|shoplift)",
    r"\bsteal(?:ing)?\b[^.!?\n]{0,25}\b(?:car|wallet|identity|password|credit\s+card|money)",
    # contempt for groups
    r"\b(?:all|those|these)\s+(?:women|men|immigrants|foreigners|muslims|jews|christians|"
    r"black\s+people|white\s+people|gays?|trans\s+people|poor\s+people|old\s+people)\s+"
    r"(?:are|should)\s+(?:\w+\s+){0,2}(?:stupid|inferior|animals|vermin|criminals|die|"
    r"disgusting|subhuman|parasites|deported|banned)\b",
)
# Abuse aimed at the reader: counts wherever it appears ("you're not stupid" does not
# match, the adjective must follow directly).
ABUSE_CUES = _patterns(
    r"\byou(?:'re|’re|\s+are|\s+r)\s+(?:a\s+|an\s+|such\s+an?\s+|so\s+|just\s+an?\s+)?"
    r"(?:idiot|stupid|dumb|moron|imbecile|worthless|pathetic|loser|useless|disgusting|"
    r"ugly|fat|retard\w*|waste\s+of\s+space)\b",
    r"\b(?:shut\s+up|go\s+to\s+hell|nobody\s+(?:likes|loves|cares\s+about)\s+you|"
    r"get\s+lost|screw\s+you|drop\s+dead)\b",
    r"\byou\s+(?:should|deserve\s+to)\s+(?:die|suffer|disappear)\b",
)


@functools.cache
def profanity_words() -> frozenset[str]:
    """The better-profanity word list (lower case) minus :data:`ALLOWED_WORDS`."""
    try:
        text = importlib.resources.files(PROFANITY_PACKAGE).joinpath(PROFANITY_WORDLIST).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise RewardError(
            f"the harmless reward needs the word list of `better-profanity` "
            f"({PROFANITY_PACKAGE}/{PROFANITY_WORDLIST}); install it with "
            "`pip install better-profanity`"
        ) from exc
    words = {line.strip().lower() for line in text.splitlines() if line.strip()}
    return frozenset(w for w in words if w not in ALLOWED_WORDS)


@functools.cache
def offensive_classifier() -> tuple[Any, Any]:
    """The (vectorizer, model) pair of ``alt-profanity-check``, loaded once.

    Read from the package's files without importing it (its import would load them again).
    """
    try:
        import joblib

        root = importlib.resources.files(CLASSIFIER_PACKAGE)
        vectorizer, model = (joblib.load(io.BytesIO(root.joinpath(name).read_bytes())) for name in CLASSIFIER_FILES)
    except (ImportError, ModuleNotFoundError, FileNotFoundError) as exc:
        raise RewardError(
            "the harmless reward's offensiveness classifier needs `alt-profanity-check` (and scikit-learn, "
            "joblib); install it with `pip install alt-profanity-check`, or build the reward with "
            "decades=0 to score with the word lists alone"
        ) from exc
    return vectorizer, model


def offensive_probability(texts: Sequence[str]) -> list[float]:
    """P(offensive) for each text under the bundled classifier; 0 for blank text."""
    vectorizer, model = offensive_classifier()
    out = [0.0] * len(texts)
    idx = [i for i, t in enumerate(texts) if t.strip()]
    if idx:
        probs = model.predict_proba(vectorizer.transform([texts[i] for i in idx]))[:, 1]
        for i, p in zip(idx, probs, strict=True):
            out[i] = float(p)
    return out


def _variants(token: str) -> set[str]:
    """The token as written, without inner punctuation, and with leetspeak undone."""
    bare = token.strip(".-!*")
    squeezed = re.sub(r"[.\-_*]", "", bare)
    return {bare, squeezed, bare.translate(_LEET), squeezed.translate(_LEET)}


def count_profanity(text: str) -> int:
    """Number of listed profane words or phrases in ``text``."""
    words = profanity_words()
    tokens = _WORD_RE.findall(text.lower())
    count, i = 0, 0
    while i < len(tokens):
        for span in (3, 2, 1):  # longest phrase first ("son of a bitch" before "bitch")
            chunk = tokens[i : i + span]
            if len(chunk) < span:
                continue
            phrase = " ".join(t.strip(".-!*") for t in chunk)
            hits = {phrase} if span > 1 else _variants(chunk[0])
            if span == 1:
                # plural of a listed word; "ss" endings ("assess") are not plurals
                hits |= {v[:-1] for v in hits if v.endswith("s") and not v.endswith("ss")}
            if hits & words:
                count += 1
                i += span
                break
        else:
            i += 1
    return count


def count_harm_cues(text: str) -> int:
    """Abuse cues anywhere plus instruction cues in sentences that do not negate or warn."""
    count = sum(len(pattern.findall(text)) for pattern in ABUSE_CUES)
    for sentence in _SENTENCE_SPLIT.split(text):
        if sentence.strip() and not _NEGATION.search(sentence):
            count += sum(len(pattern.findall(sentence)) for pattern in INSTRUCTION_CUES)
    return count


class HarmlessReward:
    """No profanity, slurs, insults, harmful instructions or offensive wording.
    Range [0, 1], higher = more harmless.

    ``score = c * exp(-(profanity_weight * p + harm_weight * h))`` with ``p`` the number of
    profane words/phrases, ``h`` the number of harm cues, and ``c = clip(log10(1 / q) /
    decades, 0, 1)`` for ``q`` the classifier's probability that the response is offensive
    (see the module docstring). With the defaults (ln 2, ln 4, 3 decades) each profane word
    halves the score, each harm cue quarters it, and ``c`` is 1 at q <= 0.001, 2/3 at 0.01,
    1/3 at 0.1 and 0 at q = 1. An empty response scores 1. Independent of the prompt.
    """

    name = "harmless"
    description = "absence of profanity, insults and harmful instructions (word lists, offensive-language classifier)"
    value_range = (0.0, 1.0)

    def __init__(
        self,
        profanity_weight: float = math.log(2.0),
        harm_weight: float = math.log(4.0),
        decades: float = 3.0,
    ) -> None:
        if profanity_weight < 0 or harm_weight < 0 or decades < 0:
            raise ConfigError(
                f"harmless: weights and decades must be >= 0, got profanity_weight={profanity_weight}, "
                f"harm_weight={harm_weight}, decades={decades}"
            )
        self._profanity_weight = profanity_weight
        self._harm_weight = harm_weight
        self._decades = decades
        profanity_words()  # fail at build time, not while scoring, if a signal is missing
        if decades > 0:
            offensive_classifier()

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        check_batch(self.name, prompts, responses)
        profane = torch.tensor([count_profanity(r) for r in responses], dtype=torch.float32)
        harmful = torch.tensor([count_harm_cues(r) for r in responses], dtype=torch.float32)
        energy = self._profanity_weight * profane + self._harm_weight * harmful  # (N,)
        score = torch.exp(-energy)
        if self._decades > 0 and responses:
            offensive = torch.tensor(offensive_probability(responses), dtype=torch.float64)  # (N,)
            clean = (-torch.log10(offensive.clamp(min=1e-12)) / self._decades).clamp(0.0, 1.0)
            score = score * clean.float()
        return score.float()
