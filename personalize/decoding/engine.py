"""The batched decoding engine: a thin facade over its three parts.

- the **head set** (``head_set.py``): the loaded heads, immutable, rebuilt when one changes;
- the **model runner** (``runner.py``): the frozen backbone's weights, the forward over packed
  tokens and the batch's KV cache (``kv_cache.py``: a slot per row, each with its own length);
- the **sampler** (``sampling.step``): pure tensor code, base logits -> guided scores -> tokens.

``DecodeBatch`` (``batch.py``) schedules them: which sequences run, what each is fed, what goes
on. Every step runs ONE forward over all live rows — for each sequence its ``__base__`` row plus
one row per LoRA head it uses — then, per sequence: base top-k → head values → combine →
sample. Heads that no sequence uses cost nothing; ``linear`` heads read the base row and add
no row at all; ``implicit`` heads (adapters whose LM-head scores are a tuned policy) add a row
whose value is its log-ratio to the base row.

Requests are turned into sequences by their method (``methods.py``): ``base`` and ``vas`` are
one sequence each, ``bon`` is N sequences reduced to the best, ``ivg`` a beam search over
candidate chunks (``search.py``), ``aisp`` rounds of perturbed samples (``aisp.py``).
Dimension letters are listed in ``sampling.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from personalize.decoding import methods
from personalize.decoding.backbone import Backbone
from personalize.decoding.batch import DecodeBatch, RewardFn
from personalize.decoding.config import GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.head_set import HeadSet
from personalize.decoding.layout import BatchLayout
from personalize.decoding.runner import ModelRunner
from personalize.decoding.runs import RunContext
from personalize.decoding.sampling import StepOutput, guided_scores, step
from personalize.decoding.sequences import SequenceSpec
from personalize.errors import ConfigError, ContextLengthError, RewardError, UnknownObjectiveError
from personalize.heads import HeadMeta, ValueHead
from personalize.models import BaseModel, fast_dtype

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Runtime dtypes by name; ``auto`` picks bfloat16 where it is fast (CUDA, CPUs with AVX512-BF16/AMX), else float32."""

PREFILL_CHUNK = 512
"""Prompt tokens fed per step across joining sequences (a longer prompt goes in over several steps)."""


@dataclass(frozen=True)
class RequestCost:
    """A request's share of a batch at its widest (all its sequences live at once)."""

    rows: int
    """Batch rows: each sequence's base row plus one per adapter head it reads (bon, ivg, aisp: every sample)."""
    sequences: int
    """Sequences live at once (1; N for bon; beams x candidates for ivg; the samples of one aisp round)."""
    kv_bytes: int
    """KV cache its sequences hold once prompt + max_new_tokens positions are in."""


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``auto`` -> bfloat16 where supported, else float32; a dtype name -> that dtype; None -> None."""
    if name is None or isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return fast_dtype(device)
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


class Engine:
    """Decodes batches of requests against one frozen base model and its value heads.

    Not thread-safe: run one ``stream``/``generate`` at a time (the service feeds it from a
    single worker), and change heads only between batches.
    """

    def __init__(
        self,
        base: BaseModel,
        heads: Sequence[ValueHead] = (),
        *,
        share_layers: bool = True,
        dtype: str | torch.dtype | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ) -> None:
        """``share_layers``: run layers that no loaded adapter touches once per sequence (on by default;
        off runs every row through every layer). ``dtype``: the runtime dtype of the backbone's weights,
        activations and KV cache (default: ``base.compute_dtype``, else the model's own; ``auto``: bf16
        where it is fast)."""
        if prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.base = base
        self.dtype = resolve_dtype(dtype, base.device) or base.compute_dtype or base.dtype
        self.runner = ModelRunner(Backbone.from_model(base.model, self.dtype))
        self.prefill_chunk = prefill_chunk
        self._share_layers = share_layers
        self._embedding: torch.Tensor = base.model.get_output_embeddings().weight  # (V, H), frozen: head values
        self.heads = HeadSet.build(base, self.runner.backbone, heads, share_layers=share_layers)

    # ---- heads -------------------------------------------------------------------------
    @property
    def objectives(self) -> Mapping[str, HeadMeta]:
        return self.heads.objectives

    def reward_names(self) -> dict[str, str]:
        """Objective -> the reward function its head was trained on (``head.json``'s ``reward``, else its name)."""
        return {name: head.meta.reward_name for name, head in self.heads.heads.items()}

    def add_head(self, head: ValueHead) -> None:
        """Load (or replace) the head for ``head.objective``; validated against the backbone."""
        self.heads = self.heads.with_head(self.base, self.runner.backbone, head, share_layers=self._share_layers)

    def remove_head(self, objective: str) -> None:
        self.heads = self.heads.without(self.base, self.runner.backbone, objective, share_layers=self._share_layers)

    def head_versions(self, objectives: Sequence[str]) -> dict[str, str]:
        return {name: self.heads.heads[name].meta.version for name in objectives}

    def head_kinds(self) -> dict[str, str]:
        """Objective -> head kind (``lora``, ``linear`` or ``implicit``) of every loaded head."""
        return {name: head.meta.kind for name, head in self.heads.heads.items()}

    def rows_for(self, spec: SequenceSpec) -> int:
        """Batch rows a sequence occupies: its base row plus one per adapter head it reads."""
        return self.heads.rows_for(spec.heads)

    def cost(self, request: GenerationRequest) -> RequestCost:
        """What a request occupies at its widest: batch rows, and KV cache bytes if it ran to its limit."""
        run = methods.plan(0, request, request.sampling.seed or 0, self._run_context())
        specs = run.start()
        rows = sum(self.heads.rows_for(spec.heads) for spec in specs)
        positions = len(request.prompt_ids) + request.sampling.max_new_tokens
        layers, split = self.runner.backbone.num_layers, self.heads.split
        per_position = self.runner.backbone.kv_bytes_per_position  # one layer, one slot
        kv_bytes = sum(
            positions * per_position * (split + (layers - split) * self.heads.rows_for(spec.heads)) for spec in specs
        )
        return RequestCost(rows=rows, sequences=len(specs), kv_bytes=kv_bytes)

    def _run_context(self) -> RunContext:
        return RunContext(
            kinds=self.head_kinds(),
            rank=lambda request, texts: [0.0] * len(texts),
            hidden_size=self.base.hidden_size,
            device=self.base.device,
        )

    # ---- public decoding API -------------------------------------------------------------
    def open_batch(self, reward: RewardFn | None = None) -> DecodeBatch:
        """A running batch that requests can join (``add``) and leave (``cancel``) between steps."""
        return DecodeBatch(self, reward)

    def generate(self, requests: Sequence[GenerationRequest], reward: RewardFn | None = None) -> list[GenerationResult]:
        """Decode all requests in one batch and return their results in order."""
        return self.open_batch(reward).generate(requests)

    def stream(self, requests: Sequence[GenerationRequest], reward: RewardFn | None = None) -> Iterator[StreamEvent]:
        """Decode all requests in one batch, yielding text as each token is produced."""
        return self.open_batch(reward).run(requests)

    def next_token_scores(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """Guided scores of the first token of each request's sequences, computed from scratch (S, V).

        Rows are ordered like the sequences a request starts with (one for ``base``/``vas``, N for ``bon``
        and ``aisp``, B x C for ``ivg``; AISP's perturbation is not applied). Used to
        inspect steering and to check the cached decode loop against recomputation.
        """
        return self.open_batch().prefill_scores(requests)

    def validate(self, request: GenerationRequest, *, reward_given: bool = False) -> None:
        """Raise the error a request would hit, before it joins a batch.

        ``reward_given``: the batch ranks samples with an explicit reward function, so ``bon``
        and ``aisp`` need no weights.
        """
        p = request.personalization
        for name in p.weights:
            if name not in self.heads.heads:
                raise UnknownObjectiveError(name, self.heads.heads)
        if p.method in ("bon", "aisp") and not reward_given and not p.nonzero_weights:
            raise RewardError(
                f"method {p.method!r} ranks samples by the weighted objectives' rewards: give non-zero weights "
                "(or pass a reward function)"
            )
        explicit = [name for name in p.nonzero_weights if name not in self.heads.implicit]
        if p.method == "ivg" and p.ivg.sequences > 1 and not explicit:
            raise ConfigError(
                f"ivg chunk search ({p.ivg.beams} beams x {p.ivg.candidates} candidates) ranks partial responses "
                "by explicit value heads: give a non-zero weight to a 'lora' or 'linear' head, or set "
                "ivg.beams = ivg.candidates = 1 for token-level (implicit) guidance alone"
            )
        bias = request.sampling.logit_bias
        if bias and max(bias) >= self.base.vocab_size:
            raise ConfigError(
                f"logit_bias names token {max(bias)}; this model's token ids are 0..{self.base.vocab_size - 1}"
            )
        limit = self.base.context_length
        need = len(request.prompt_ids) + request.sampling.max_new_tokens
        if need > limit:
            raise ContextLengthError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_new_tokens "
                f"({request.sampling.max_new_tokens}) = {need} exceeds the model's context of {limit} tokens"
            )

    # ---- the sampler's inputs, used by DecodeBatch ------------------------------------------
    def sample(self, hidden: torch.Tensor, layout: BatchLayout, counters: torch.Tensor) -> StepOutput:
        """forward output → (perturb) → base logits → top-k → values → combine → sample, every sequence.

        hidden (R, H) every row's final state, counters (S,) tokens each sequence sampled before.
        """
        base_hidden = hidden[layout.base_rows]  # (S, H)
        if layout.perturb is not None:
            base_hidden = layout.perturb.apply(base_hidden, counters)  # (S, H): AISP pre-logit shift
        logits = self.runner.logits(base_hidden)  # (S, V)
        stack = self.heads.stack
        return step(logits, hidden, self._embedding, stack, layout.entries, layout.scorers, layout.sampling, counters)

    def scores(self, hidden: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
        """First-token guided scores (S, V) float32 (no perturbation, no sampling filter)."""
        logits = self.runner.logits(hidden[layout.base_rows])  # (S, V)
        remaining = layout.sampling.max_new_tokens - 1  # the first token is pending
        stack = self.heads.stack
        scores, _ = guided_scores(logits, hidden, self._embedding, stack, layout.entries, layout.sampling, remaining)
        return scores
