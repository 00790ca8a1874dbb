"""Pure tensor steps of the decoder: value guidance, then sampling.

Dimension letters used across ``personalize.decoding``:
    S sequences (token streams being decoded), R batch rows (a sequence's base
    row plus one row per LoRA head it uses), M value entries (one per
    sequence x head it uses), C top-k candidates, V vocabulary, H hidden size,
    N loaded heads (value slots), r low rank.

Nothing here touches a database, file, clock or logger, and nothing syncs the
device: tensors and configuration in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from personalize.decoding.rng import uniforms
from personalize.heads import budget_features


@dataclass(frozen=True)
class ValueStack:
    """All loaded heads' value outputs stacked by slot, float32 on the decode device.

    Implicit heads have all-zero ``down``/``up``/``state``/``bias``: their value is the log-ratio of
    their row's and the base row's LM-head scores (see :func:`head_values`).
    """

    down: torch.Tensor  # (N, r, H)
    up: torch.Tensor  # (N, H, r)
    inv_scale: torch.Tensor  # (N,) 1 / calibration scale
    state: torch.Tensor | None = None  # (N, H) state-value vector v (absolute values only)
    bias: torch.Tensor | None = None  # (N,) b (absolute values only)
    budget_dir: torch.Tensor | None = None  # (N, K, H) c_k of budget-aware heads (zeros for the others)
    budget_bias: torch.Tensor | None = None  # (N, K) b_k (absolute values only)
    budget_scales: torch.Tensor | None = None  # (N, K) decay lengths tau_k in tokens
    end_only: torch.Tensor | None = None  # (N,) 1.0 for stopping heads (steer "end"), else 0.0
    end_ids: torch.Tensor | None = None  # (E,) the model's end-of-answer token ids (read for stopping heads)


@dataclass(frozen=True)
class ValueEntries:
    """Which hidden state feeds which head for which sequence, and with what coefficient."""

    source_row: torch.Tensor  # (M,) row whose final hidden state the head reads
    slot: torch.Tensor  # (M,) value slot of the head
    sequence: torch.Tensor  # (M,) sequence the value steers
    coef: torch.Tensor  # (M,) beta * weight, float32
    implicit: torch.Tensor | None = None  # (M,) 1.0 where the head is implicit (value = log-ratio), else 0.0
    base_row: torch.Tensor | None = None  # (M,) base row of the entry's sequence (read by implicit heads)

    @property
    def empty(self) -> bool:
        return self.slot.numel() == 0


def _direction(
    h: torch.Tensor, stack: ValueStack, entries: ValueEntries, remaining: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each entry's explicit value direction ``U(D h) + Σ_k φ_k(n) c_k`` (M, H, 1) from its hidden state
    h (M, H), and its budget features (M, K) (None when no head reads the budget or it is unlimited)."""
    direction = torch.bmm(stack.up[entries.slot], torch.bmm(stack.down[entries.slot], h.unsqueeze(-1)))  # (M, H, 1)
    if remaining is None or stack.budget_dir is None or stack.budget_scales is None:
        return direction, None
    features = budget_features(remaining[entries.sequence], stack.budget_scales[entries.slot])  # (M, K)
    budget = torch.bmm(features.unsqueeze(1), stack.budget_dir[entries.slot])  # (M, 1, H)
    return direction + budget.transpose(1, 2), features  # (M, H, 1)


def head_values(
    hidden: torch.Tensor,
    candidates: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack,
    entries: ValueEntries,
    remaining: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative ``Q(s, a)`` of each entry's candidates: ``E[a] · d`` (state value, bias and normalisers cancel).

    Explicit heads: ``d = U(D h)``. Implicit heads: ``d = h - h_base``, so ``E[a] · d`` is
    ``log pi_tuned(a|s) - log pi_base(a|s)`` up to a constant per row (it cancels when centring),
    and is exactly zero when the adapter row equals the base row. Budget-aware heads add
    ``Σ_k φ_k(n) c_k`` to ``d``, with ``n`` = ``remaining`` tokens after the candidate (None: unlimited).
    hidden (R, H), candidates (S, C) token ids, embedding (V, H), remaining (S,) -> (M, C) float32.
    """
    h = hidden[entries.source_row].float()  # (M, H)
    direction, _ = _direction(h, stack, entries, remaining)  # (M, H, 1)
    if entries.implicit is not None and entries.base_row is not None:
        log_ratio_dir = h - hidden[entries.base_row].float()  # (M, H)
        direction = direction + (entries.implicit.unsqueeze(-1) * log_ratio_dir).unsqueeze(-1)  # (M, H, 1)
    cand_emb = embedding[candidates[entries.sequence]].float()  # (M, C, H)
    return torch.bmm(cand_emb, direction).squeeze(-1)  # (M, C)


def taken_values(
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack,
    entries: ValueEntries,
    num_sequences: int,
    remaining: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted absolute value of each sequence's sampled token: ``Σ coef · Q(s, a)``, ``Q = v·h + E[a]·U(D h) + b``
    (plus the budget terms of budget-aware heads, ``remaining`` (S,) tokens after the token; None: unlimited).

    Ranks partial responses in chunk-level search (``coef`` = weight / return std).
    hidden (R, H), tokens (S,) -> (S,) float32.
    """
    h = hidden[entries.source_row].float()  # (M, H)
    direction, features = _direction(h, stack, entries, remaining)  # (M, H, 1), (M, K) | None
    taken = embedding[tokens[entries.sequence]].float()  # (M, H)
    q = (taken * direction.squeeze(-1)).sum(-1)  # (M,)
    if stack.state is not None and stack.bias is not None:
        q = q + (stack.state[entries.slot] * h).sum(-1) + stack.bias[entries.slot]  # (M,)
    if features is not None and stack.budget_bias is not None:
        q = q + (features * stack.budget_bias[entries.slot]).sum(-1)  # (M,)
    return torch.zeros(num_sequences, device=q.device).index_add_(0, entries.sequence, entries.coef * q)  # (S,)


@dataclass(frozen=True)
class Guidance:
    """What the heads add to each sequence's base top-k."""

    candidates: torch.Tensor  # (S, C) base top-k token ids
    bonus: torch.Tensor  # (M, C) beta * w * z for each value entry and candidate

    def contributions(self, tokens: torch.Tensor, entries: ValueEntries) -> torch.Tensor:
        """Each entry's push on the token its sequence sampled (0 outside the top-k). tokens (S,) -> (M,)."""
        hit = self.candidates[entries.sequence] == tokens[entries.sequence].unsqueeze(-1)  # (M, C)
        return (self.bonus * hit).sum(-1)  # (M,)


def value_guidance(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack,
    entries: ValueEntries,
    top_k: torch.Tensor,
    max_top_k: int,
    remaining: torch.Tensor | None = None,
) -> Guidance:
    """``beta · w_k · z_k`` for every entry over its sequence's base top-k.

    ``z_k`` is head k's value centred over the (per-sequence) top-k and divided by its
    calibration scale. logits (S, V) float32, hidden (R, H), remaining (S,) tokens left after
    the next one (read by budget-aware heads; None: unlimited).
    """
    top_logits, candidates = logits.topk(max_top_k, dim=-1)  # (S, C)
    valid = torch.arange(max_top_k, device=logits.device) < top_k.unsqueeze(-1)  # (S, C)
    bonus = candidate_bonus(candidates, top_logits, valid, hidden, embedding, stack, entries, remaining)  # (M, C)
    return Guidance(candidates, bonus)


def candidate_bonus(
    candidates: torch.Tensor,
    candidate_logits: torch.Tensor,
    valid: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack,
    entries: ValueEntries,
    remaining: torch.Tensor | None = None,
) -> torch.Tensor:
    """``beta · w_k · z_k`` of every entry over given candidates (S, C) with their base logits (S, C);
    ``valid`` (S, C) marks the candidates that count (the others get 0 and do not enter the centring).

    The candidates are the base top-k locally, or the top-k an upstream engine returned (remote)."""
    values = head_values(hidden, candidates, embedding, stack, entries, remaining)  # (M, C)
    entry_valid = valid[entries.sequence].float()  # (M, C)
    mean = (values * entry_valid).sum(-1, keepdim=True) / entry_valid.sum(-1, keepdim=True)  # (M, 1)
    relative = values - mean  # (M, C)
    if stack.end_only is not None and stack.end_ids is not None:
        stopping = _stopping_values(values, candidate_logits, candidates, entry_valid, stack.end_ids, entries)
        relative = torch.where(stack.end_only[entries.slot].unsqueeze(-1) > 0, stopping, relative)  # (M, C)
    scale = (entries.coef * stack.inv_scale[entries.slot]).unsqueeze(-1)  # (M, 1)
    return relative * entry_valid * scale  # (M, C)


def _stopping_values(
    values: torch.Tensor,
    top_logits: torch.Tensor,
    candidates: torch.Tensor,
    entry_valid: torch.Tensor,
    end_ids: torch.Tensor,
    entries: ValueEntries,
) -> torch.Tensor:
    """A stopping head's push (M, C): ``Q(s, end) - V_go_on(s)`` on the end tokens among the top-k, 0 elsewhere.

    ``V_go_on`` is the value of the other valid candidates weighted by their base probabilities
    (renormalised over them); with no such candidate (or no end token) nothing is pushed.
    values (M, C), top_logits/candidates (S, C), entry_valid (M, C), end_ids (E,).
    """
    is_end = torch.isin(candidates, end_ids)[entries.sequence].float()  # (M, C)
    go_on = entry_valid * (1.0 - is_end)  # (M, C)
    logits = top_logits[entries.sequence]  # (M, C)
    weight = torch.exp(logits - logits.amax(-1, keepdim=True)) * go_on  # (M, C)
    total = weight.sum(-1, keepdim=True)  # (M, 1)
    go_on_value = (values * weight).sum(-1, keepdim=True) / total.clamp_min(1e-30)  # (M, 1)
    return (values - go_on_value) * is_end * (total > 0).float()  # (M, C)


def apply_guidance(logits: torch.Tensor, guidance: Guidance, entries: ValueEntries) -> torch.Tensor:
    """Add every entry's bonus to its sequence's candidates; other tokens keep their logits. (S, V)."""
    S, C = guidance.candidates.shape
    bonus = torch.zeros(S, C, device=logits.device).index_add_(0, entries.sequence, guidance.bonus)  # (S, C)
    return logits.scatter_add(1, guidance.candidates, bonus)  # (S, V)


def guide_scores(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack | None,
    entries: ValueEntries,
    top_k: torch.Tensor,
    max_top_k: int,
    remaining: torch.Tensor | None = None,
) -> torch.Tensor:
    """``logits + beta · Σ_k w_k · z_k`` over each sequence's base top-k (unchanged elsewhere). (S, V)."""
    if stack is None or entries.empty:
        return logits
    guidance = value_guidance(logits, hidden, embedding, stack, entries, top_k, max_top_k, remaining)
    return apply_guidance(logits, guidance, entries)


def filter_top_k(scores: torch.Tensor, keep: torch.Tensor, max_keep: int) -> torch.Tensor:
    """Drop all but each row's ``keep`` best scores (``keep == 0``: keep all). scores (S, V), keep (S,)."""
    kth = scores.topk(max_keep, dim=-1).values  # (S, K)
    threshold = kth.gather(-1, (keep.clamp_min(1) - 1).unsqueeze(-1))  # (S, 1)
    threshold = torch.where(keep.unsqueeze(-1) > 0, threshold, torch.full_like(threshold, -torch.inf))
    return scores.masked_fill(scores < threshold, -torch.inf)  # (S, V)


def sample_tokens(
    scores: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    uniform: torch.Tensor,
    *,
    use_top_p: bool,
) -> torch.Tensor:
    """Temperature → top-p → inverse-CDF draw with one uniform per row; temperature 0 is greedy.

    scores (S, V) (already top-k filtered if asked), temperature/top_p/uniform (S,) -> token ids (S,).
    """
    greedy = scores.argmax(dim=-1)  # (S,)
    probs = torch.softmax(scores / temperature.clamp_min(1e-6).unsqueeze(-1), dim=-1)  # (S, V)
    if use_top_p:
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # (S, V)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (S, V)
        keep = (mass_before < top_p.unsqueeze(-1)) | (top_p >= 1.0).unsqueeze(-1)  # (S, V) first always kept
        # Back to vocabulary order, so a row with top_p = 1 draws exactly as without top-p.
        probs = probs * torch.zeros_like(keep).scatter(-1, order, keep)  # (S, V)
    cdf = probs.cumsum(dim=-1)  # (S, V)
    target = (uniform * cdf[:, -1]).unsqueeze(-1)  # (S, 1)
    sampled = torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[-1] - 1).squeeze(-1)  # (S,)
    return torch.where(temperature == 0, greedy, sampled)


@dataclass(frozen=True)
class SamplingTensors:
    """Each sequence's sampling parameters as tensors (S,), built when the batch's membership changes."""

    temperature: torch.Tensor  # (S,)
    top_p: torch.Tensor  # (S,)
    top_k: torch.Tensor  # (S,) guidance top-k
    seeds: torch.Tensor  # (S,) int64
    sample_top_k: torch.Tensor  # (S,) 0 = no filter
    max_new_tokens: torch.Tensor  # (S,) int64
    max_top_k: int
    max_sample_top_k: int
    use_top_p: bool
    within_top_k: torch.Tensor  # (S,) bool: only the base top-k may be sampled
    any_within_top_k: bool
    top_logprobs: int = 0  # alternatives to report per position (the most any sequence asks for)
    logit_bias: tuple[torch.Tensor, torch.Tensor] | None = None  # (S, B) token ids, (S, B) biases


class StepOutput(NamedTuple):
    """One decode step's result for every live sequence."""

    tokens: torch.Tensor  # (S,) sampled token ids
    logprobs: torch.Tensor  # (S,) their log-probabilities under the distribution they were drawn from
    contributions: torch.Tensor  # (M,) each value entry's push on its sequence's sampled token
    values: torch.Tensor  # (S,) chunk-level score of the sampled token (0 without scoring heads)
    top_ids: torch.Tensor | None = None  # (S, K) the most likely tokens (K = the most any sequence asks for)
    top_logprobs: torch.Tensor | None = None  # (S, K) their log-probabilities


def guided_scores(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack | None,
    entries: ValueEntries,
    params: SamplingTensors,
    remaining: torch.Tensor,
) -> tuple[torch.Tensor, Guidance | None]:
    """Base logits (S, V) -> the value-guided scores (S, V) and the guidance (None: nothing steers).

    A sequence's ``logit_bias`` is added to its base logits first (before the top-k: a bias can bring a
    token in or push it out). Rows sampling ``within_top_k`` keep only their base top-k candidates."""
    if params.logit_bias is not None:
        ids, bias = params.logit_bias
        logits = logits.scatter_add(1, ids, bias)  # (S, V)
    guidance = None
    scores = logits
    if stack is not None and not entries.empty:
        guidance = value_guidance(logits, hidden, embedding, stack, entries, params.top_k, params.max_top_k, remaining)
        scores = apply_guidance(logits, guidance, entries)  # (S, V)
    if params.any_within_top_k:
        candidates = guidance.candidates if guidance is not None else logits.topk(params.max_top_k, -1).indices
        valid = torch.arange(params.max_top_k, device=logits.device) < params.top_k.unsqueeze(-1)  # (S, C)
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter(1, candidates, valid)  # (S, V)
        scores = scores.masked_fill(params.within_top_k.unsqueeze(-1) & ~keep, -torch.inf)  # (S, V)
    return scores, guidance


def step(
    logits: torch.Tensor,
    hidden: torch.Tensor,
    embedding: torch.Tensor,
    stack: ValueStack | None,
    entries: ValueEntries,
    scorers: ValueEntries,
    params: SamplingTensors,
    counters: torch.Tensor,
) -> StepOutput:
    """Base logits → top-k values → combine → (top-k filter) → sample, for every sequence.

    logits (S, V) float32, hidden (R, H) every row's final state, counters (S,) tokens each
    sequence sampled before (its random stream's counter and its budget used).
    """
    remaining = params.max_new_tokens - counters - 1  # (S,) tokens each sequence may take after this one
    scores, guidance = guided_scores(logits, hidden, embedding, stack, entries, params, remaining)  # (S, V)
    if params.max_sample_top_k > 0:
        scores = filter_top_k(scores, params.sample_top_k, params.max_sample_top_k)  # (S, V)
    u = uniforms(params.seeds, counters)  # (S,)
    tokens = sample_tokens(scores, params.temperature, params.top_p, u, use_top_p=params.use_top_p)  # (S,)
    tau = torch.where(params.temperature > 0, params.temperature, torch.ones_like(params.temperature))  # (S,)
    drawn_from = torch.log_softmax(scores / tau.unsqueeze(-1), dim=-1)  # (S, V); greedy reports temperature 1
    logprobs = drawn_from.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (S,)
    top_logprobs, top_ids = (
        drawn_from.topk(params.top_logprobs, dim=-1) if params.top_logprobs > 0 else (None, None)
    )  # (S, K) each
    pushes = guidance.contributions(tokens, entries) if guidance is not None else scores.new_zeros(0)  # (M,)
    S = tokens.shape[0]
    if stack is None or scorers.empty:
        values = torch.zeros(S, device=tokens.device)
    else:
        values = taken_values(hidden, tokens, embedding, stack, scorers, S, remaining)  # (S,)
    return StepOutput(tokens, logprobs, pushes, values, top_ids, top_logprobs)
