"""The batched decoding engine.

Every step runs ONE forward over all rows of the batch — for each sequence its
``__base__`` row plus one row per LoRA head it uses, each row with its own KV
cache entry — then, per sequence: base top-k → head values → combine → sample
→ append. Heads that no sequence uses cost nothing; ``linear`` heads read the
base row and add no row at all; ``implicit`` heads (adapters whose LM-head scores
are a tuned policy) add a row whose value is its log-ratio to the base row.

Requests are turned into sequences by their method (``methods.py``): ``base``
and ``vas`` are one sequence each, ``bon`` is N sequences reduced to the best,
``ivg`` a beam search over candidate chunks (``search.py``), ``aisp`` rounds of
perturbed samples (``aisp.py``). Dimension letters are listed in ``sampling.py``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from personalize.decoding.aisp import Perturbations, build_perturbations
from personalize.decoding.batch import DecodeBatch, RewardFn
from personalize.decoding.config import GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.rng import uniforms
from personalize.decoding.sampling import (
    Guidance,
    ValueEntries,
    ValueStack,
    apply_guidance,
    filter_top_k,
    sample_tokens,
    taken_values,
    value_guidance,
)
from personalize.decoding.sequences import SequenceOutput, SequenceSpec
from personalize.errors import ConfigError, ContextLengthError, RewardError, UnknownObjectiveError
from personalize.heads import ADAPTER_KINDS, HeadMeta, ValueHead, check_compatible
from personalize.lora import MultiLoRALinear, wrap_targets
from personalize.models import BaseModel


def cache_keyword(fn: Any) -> str:
    """The name under which ``fn`` takes the KV cache: ``cache`` (newer transformers) or
    ``past_key_values`` (older ones, and deprecated in between)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


_MASK_CACHE_KW = cache_keyword(create_causal_mask)


class StepOutput(NamedTuple):
    """One decode step's result for every live sequence."""

    tokens: torch.Tensor  # (S,) sampled token ids
    logprobs: torch.Tensor  # (S,) their log-probabilities under the final scores
    contributions: torch.Tensor  # (M,) each value entry's push on its sequence's sampled token
    values: torch.Tensor  # (S,) chunk-level score of the sampled token (0 without scoring heads)


@dataclass
class _Layout:
    """Index tensors of the live batch; rebuilt only when its composition changes."""

    live: list[int]  # sequence numbers (into the run's outputs) still decoding, in row order
    row_slots: torch.Tensor  # (R,) LoRA slot per row, 0 = base
    row_sequence: torch.Tensor  # (R,) live position of each row's sequence
    base_rows: torch.Tensor  # (S,) each sequence's first row; its other rows follow it
    row_starts: list[int]  # the same, as Python ints (for reordering the cache)
    row_counts: list[int]  # rows per sequence
    entries: ValueEntries  # token level: what steers each sequence's scores
    scorers: ValueEntries  # chunk level: what ranks each sequence's partial response (ivg)
    entry_owner: list[tuple[int, str]]  # (live position, objective) of each value entry
    perturb: Perturbations | None  # AISP pre-logit perturbations
    temperature: torch.Tensor  # (S,)
    top_p: torch.Tensor  # (S,)
    top_k: torch.Tensor  # (S,)
    seeds: torch.Tensor  # (S,) int64
    sample_top_k: torch.Tensor  # (S,) 0 = no filter
    max_new_tokens: torch.Tensor  # (S,) int64 token limit of each sequence
    max_top_k: int
    max_sample_top_k: int
    use_top_p: bool


@dataclass
class _Heads:
    """Loaded heads and their slots: value slot per objective, LoRA slot per LoRA head."""

    heads: dict[str, ValueHead] = field(default_factory=dict)
    value_slot: dict[str, int] = field(default_factory=dict)
    lora_slot: dict[str, int] = field(default_factory=dict)
    stack: ValueStack | None = None
    implicit: set[str] = field(default_factory=set)
    inv_std: dict[str, float] = field(default_factory=dict)  # 1 / return std: weights chunk-level scores


@dataclass
class _EntryLists:
    """Value entries gathered per sequence while a layout is built."""

    source_row: list[int] = field(default_factory=list)
    slot: list[int] = field(default_factory=list)
    sequence: list[int] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    base_row: list[int] = field(default_factory=list)
    implicit: list[float] = field(default_factory=list)

    def add(self, source_row: int, slot: int, sequence: int, coef: float, base_row: int) -> None:
        self.source_row.append(source_row)
        self.slot.append(slot)
        self.sequence.append(sequence)
        self.coef.append(coef)
        self.base_row.append(base_row)

    def tensors(self, dev: torch.device) -> ValueEntries:
        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        implicit = torch.tensor(self.implicit, dtype=torch.float32, device=dev) if any(self.implicit) else None
        return ValueEntries(
            ints(self.source_row),
            ints(self.slot),
            ints(self.sequence),
            torch.tensor(self.coef, dtype=torch.float32, device=dev),
            implicit=implicit,
            base_row=ints(self.base_row) if implicit is not None else None,
        )


class Engine:
    """Decodes batches of requests against one frozen base model and its value heads.

    Not thread-safe: run one ``stream``/``generate`` at a time (the service feeds it
    from a single worker), and change heads only between batches.
    """

    def __init__(self, base: BaseModel, heads: Sequence[ValueHead] = (), *, share_layers: bool = True) -> None:
        """``share_layers``: run layers that no loaded adapter touches once per sequence (on by default;
        off runs every row through every layer, the plain mixed-adapter batch)."""
        self.base = base
        self._share_layers = share_layers
        self._decoder: Any = base.model.get_decoder()  # transformers modules are dynamically typed
        self._decoder_cache_kw = cache_keyword(self._decoder.forward)
        layers = getattr(self._decoder, "layers", None)
        self._layer_cache_kw = cache_keyword(layers[0].forward) if layers else "past_key_values"
        self._lm_head: nn.Module = base.model.get_output_embeddings()
        self._embedding: torch.Tensor = self._lm_head.weight  # (V, H), frozen
        self._wrappers: dict[str, MultiLoRALinear] = {}
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._heads = _Heads()
        self._split: int | None = None
        for head in heads:
            self.add_head(head, _rebuild=False)
        self._rebuild()

    # ---- heads -------------------------------------------------------------------------
    @property
    def objectives(self) -> Mapping[str, HeadMeta]:
        return {name: head.meta for name, head in self._heads.heads.items()}

    def reward_names(self) -> dict[str, str]:
        """Objective -> the reward function its head was trained on (``head.json``'s ``reward``, else its name)."""
        return {name: head.meta.reward_name for name, head in self._heads.heads.items()}

    def add_head(self, head: ValueHead, *, _rebuild: bool = True) -> None:
        """Load (or replace) the head for ``head.objective``; validated against the backbone."""
        check_compatible(head, self.base)
        if head.meta.lora is not None:
            self._wrappers = wrap_targets(self.base.model, head.meta.lora.target_modules)
        self._heads.heads[head.objective] = head
        if _rebuild:
            self._rebuild()

    def remove_head(self, objective: str) -> None:
        if objective not in self._heads.heads:
            raise UnknownObjectiveError(objective, self._heads.heads)
        del self._heads.heads[objective]
        self._rebuild()

    def _shared_layers(self, adapted_modules: list[str]) -> int | None:
        """How many bottom layers no loaded adapter touches (None: this backbone cannot be split)."""
        decoder = self._decoder
        config = getattr(decoder, "config", None)
        layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if (
            not self._share_layers
            or not all(hasattr(decoder, name) for name in needed)
            or layer_types != {"full_attention"}
        ):
            return None
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            return None
        first = len(decoder.layers)
        for module in adapted_modules:
            match = re.search(r"\.layers\.(\d+)\.", module)
            if match is None:  # an adapter outside the layer stack: nothing can be shared
                return 0
            first = min(first, int(match.group(1)))
        return first

    def _rebuild(self) -> None:
        """Restack value outputs and LoRA adapters after the head set changed."""
        heads = self._heads.heads
        dev = self.base.device
        self._heads.value_slot = {name: i for i, name in enumerate(heads)}
        self._heads.implicit = {name for name, h in heads.items() if h.meta.kind == "implicit"}
        self._heads.inv_std = {name: 1.0 / max(h.meta.calibration.return_std, 1e-6) for name, h in heads.items()}
        lora_heads = [name for name, h in heads.items() if h.meta.kind in ADAPTER_KINDS]
        self._heads.lora_slot = {name: i + 1 for i, name in enumerate(lora_heads)}
        module_names = list(self._wrappers)
        per_head = {name: heads[name].adapter_pairs(module_names) for name in lora_heads}
        self._split = self._shared_layers([module for pairs in per_head.values() for module in pairs])
        self._stacks = {
            module: wrapper.build_stack([per_head[name].get(module) for name in lora_heads])
            for module, wrapper in self._wrappers.items()
        }
        if not heads:
            self._heads.stack = None
            return
        rank = max([h.meta.value_rank for h in heads.values()] + [1])
        hidden = self.base.hidden_size
        down = torch.zeros(len(heads), rank, hidden)  # implicit heads (rank 0) keep zeros: no explicit value
        up = torch.zeros(len(heads), hidden, rank)
        state = torch.zeros(len(heads), hidden)
        bias = torch.zeros(len(heads))
        inv_scale = torch.zeros(len(heads))
        features = max(len(h.meta.budget_scales) for h in heads.values())
        budget_dir = torch.zeros(len(heads), features, hidden)  # heads with fewer features pad with zeros
        budget_bias = torch.zeros(len(heads), features)
        budget_scales = torch.ones(len(heads), features)
        for slot, head in enumerate(heads.values()):
            r = head.meta.value_rank
            down[slot, :r] = head.output.down.weight.detach().float().cpu()
            up[slot, :, :r] = head.output.up.weight.detach().float().cpu()
            state[slot] = head.output.state.weight.detach().float().cpu()[0]
            bias[slot] = float(head.output.bias.detach())
            inv_scale[slot] = 1.0 / head.meta.calibration.scale
            k = len(head.meta.budget_scales)
            if k:
                budget_dir[slot, :k] = head.output.budget_dir.detach().float().cpu()
                budget_bias[slot, :k] = head.output.budget_bias.detach().float().cpu()
                budget_scales[slot, :k] = torch.tensor(head.meta.budget_scales)
        budget: tuple[torch.Tensor | None, ...] = (None, None, None)
        if features:
            budget = (budget_dir.to(dev), budget_bias.to(dev), budget_scales.to(dev))
        end_only = torch.tensor([float(h.meta.steer == "end") for h in heads.values()])
        stopping: tuple[torch.Tensor | None, ...] = (None, None)
        if end_only.any():
            stopping = (end_only.to(dev), torch.tensor(self.base.eos_token_ids, dtype=torch.long, device=dev))
        self._heads.stack = ValueStack(
            down.to(dev), up.to(dev), inv_scale.to(dev), state.to(dev), bias.to(dev), *budget, *stopping
        )

    # ---- public decoding API -------------------------------------------------------------
    def open_batch(self, reward: RewardFn | None = None) -> DecodeBatch:
        """A running batch that requests can join (``add``) and leave (``cancel``) between steps."""
        return DecodeBatch(self, reward)

    def generate(self, requests: Sequence[GenerationRequest], reward: RewardFn | None = None) -> list[GenerationResult]:
        """Decode all requests in one batch and return their results in order."""
        batch = self.open_batch(reward)
        for _ in batch.run(requests):
            pass
        return batch.results()

    def stream(self, requests: Sequence[GenerationRequest], reward: RewardFn | None = None) -> Iterator[StreamEvent]:
        """Decode all requests in one batch, yielding text as each token is produced."""
        return self.open_batch(reward).run(requests)

    def validate(self, request: GenerationRequest, *, reward_given: bool = False) -> None:
        """Raise the error a request would hit, before it joins a batch.

        ``reward_given``: the batch ranks samples with an explicit reward function, so ``bon``
        and ``aisp`` need no weights.
        """
        p = request.personalization
        for name in p.weights:
            if name not in self._heads.heads:
                raise UnknownObjectiveError(name, self._heads.heads)
        if p.method in ("bon", "aisp") and not reward_given and not p.nonzero_weights:
            raise RewardError(
                f"method {p.method!r} ranks samples by the weighted objectives' rewards: give non-zero weights "
                "(or pass a reward function)"
            )
        explicit = [name for name in p.nonzero_weights if name not in self._heads.implicit]
        if p.method == "ivg" and p.ivg.sequences > 1 and not explicit:
            raise ConfigError(
                f"ivg chunk search ({p.ivg.beams} beams x {p.ivg.candidates} candidates) ranks partial responses "
                "by explicit value heads: give a non-zero weight to a 'lora' or 'linear' head, or set "
                "ivg.beams = ivg.candidates = 1 for token-level (implicit) guidance alone"
            )
        limit = self.base.context_length
        need = len(request.prompt_ids) + request.sampling.max_new_tokens
        if need > limit:
            raise ContextLengthError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_new_tokens "
                f"({request.sampling.max_new_tokens}) = {need} exceeds the model's context of {limit} tokens"
            )

    def head_versions(self, objectives: Sequence[str]) -> dict[str, str]:
        return {name: self._heads.heads[name].meta.version for name in objectives}

    def head_kinds(self) -> dict[str, str]:
        """Objective -> head kind (``lora``, ``linear`` or ``implicit``) of every loaded head."""
        return {name: head.meta.kind for name, head in self._heads.heads.items()}

    def rows_for(self, spec: SequenceSpec) -> int:
        """Batch rows a sequence occupies: its base row plus one per adapter head it reads."""
        return 1 + sum(1 for name in spec.heads if name in self._heads.lora_slot)

    # ---- internals used by DecodeBatch --------------------------------------------------------
    def _layout(self, outputs: Sequence[SequenceOutput], live: list[int]) -> _Layout:
        """Index tensors for the sequences ``live`` (numbers into ``outputs``), rows grouped per sequence."""
        dev = self.base.device
        row_slots: list[int] = []
        row_sequence: list[int] = []
        base_rows: list[int] = []
        steer = _EntryLists()
        score = _EntryLists()
        owners: list[tuple[int, str]] = []
        for pos, number in enumerate(live):
            spec = outputs[number].spec
            base_row = len(row_slots)
            base_rows.append(base_row)
            row_slots.append(0)
            row_sequence.append(pos)
            head_row: dict[str, int] = {}
            for name in spec.heads:
                lora = self._heads.lora_slot.get(name)
                if lora is not None:
                    head_row[name] = len(row_slots)
                    row_slots.append(lora)
                    row_sequence.append(pos)
            for name, coef in spec.steer:
                steer.add(head_row.get(name, base_row), self._heads.value_slot[name], pos, coef, base_row)
                steer.implicit.append(float(name in self._heads.implicit))
                owners.append((pos, name))
            for name, weight in spec.score:
                coef = weight * self._heads.inv_std[name]
                score.add(head_row.get(name, base_row), self._heads.value_slot[name], pos, coef, base_row)
        specs = [outputs[n].spec for n in live]

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=dev)

        def floats(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=dev)

        return _Layout(
            live=live,
            row_slots=ints(row_slots),
            row_sequence=ints(row_sequence),
            base_rows=ints(base_rows),
            row_starts=base_rows,
            row_counts=[b - a for a, b in zip(base_rows, [*base_rows[1:], len(row_slots)], strict=True)],
            entries=steer.tensors(dev),
            scorers=score.tensors(dev),
            entry_owner=owners,
            perturb=build_perturbations(specs, self.base.hidden_size, dev),
            temperature=floats([s.temperature for s in specs]),
            top_p=floats([s.top_p for s in specs]),
            top_k=ints([s.top_k for s in specs]),
            seeds=ints([s.seed for s in specs]),
            sample_top_k=ints([s.sample_top_k for s in specs]),
            max_new_tokens=ints([s.max_new_tokens for s in specs]),
            max_top_k=max(s.top_k for s in specs),
            max_sample_top_k=max(s.sample_top_k for s in specs),
            use_top_p=any(s.top_p < 1.0 and s.temperature > 0 for s in specs),
        )

    def _select_rows(self, layout: _Layout | None) -> None:
        """Install this engine's adapter stacks and each row's adapter (None: plain base model)."""
        for module, wrapper in self._wrappers.items():
            wrapper.install(*self._stacks[module])
            wrapper.select_rows(None if layout is None else layout.row_slots)

    def _forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache, layout: _Layout
    ) -> torch.Tensor:
        """Backbone forward; returns every row's last hidden state (R, H).

        Inputs are per sequence: ids/positions (S, T), mask (S, L). Layers below
        ``self._split`` carry no adapter, so they run once per sequence and their
        output is fanned out to the sequence's rows for the adapted layers above.
        """
        rows = layout.row_sequence  # (R,)
        if self._split is None:  # a backbone we cannot split: every row runs every layer
            out = self._decoder(
                input_ids=input_ids[rows],
                attention_mask=mask[rows],
                position_ids=positions[rows],
                use_cache=True,
                **{self._decoder_cache_kw: cache},
            )
            return out.last_hidden_state[:, -1]  # (R, H)
        decoder = self._decoder
        hidden = decoder.embed_tokens(input_ids)  # (S, T, H)
        hidden = self._run_layers(hidden, 0, self._split, mask, positions, cache)  # (S, T, H)
        hidden = hidden[rows]  # (R, T, H): fan out to each sequence's adapted rows
        hidden = self._run_layers(hidden, self._split, len(decoder.layers), mask[rows], positions[rows], cache)
        return decoder.norm(hidden[:, -1])  # (R, H)

    def _run_layers(
        self,
        hidden: torch.Tensor,
        start: int,
        stop: int,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Decoder layers ``start:stop`` on hidden (B, T, H) with its mask (B, L) and positions (B, T)."""
        if start == stop:
            return hidden
        decoder = self._decoder
        causal = create_causal_mask(
            config=decoder.config,
            inputs_embeds=hidden,
            attention_mask=mask,
            position_ids=positions,
            layer_idx=start,
            **{_MASK_CACHE_KW: cache},
        )
        rotary = decoder.rotary_emb(hidden, position_ids=positions)
        for layer in decoder.layers[start:stop]:
            hidden = layer(
                hidden,
                attention_mask=causal,
                position_embeddings=rotary,
                position_ids=positions,
                use_cache=True,
                **{self._layer_cache_kw: cache},
            )
        return hidden

    def _reorder(self, cache: DynamicCache, sources: list[int], layout: _Layout) -> torch.Tensor:
        """Make the cache hold sequences ``sources`` (live positions of ``layout``, repeats allowed), in order.

        Lower layers hold sequences, upper layers rows: each picked sequence brings all its rows.
        Entries are copied by index, never recomputed. Returns the picked rows (R',).
        """
        dev = self.base.device
        starts, counts = layout.row_starts, layout.row_counts
        rows = torch.tensor([starts[s] + k for s in sources for k in range(counts[s])], dtype=torch.long, device=dev)
        if self._split is None:
            cache.batch_select_indices(rows)
            return rows
        picked = torch.tensor(sources, dtype=torch.long, device=dev)  # (S',)
        layers: list[Any] = list(cache.layers)
        for index, layer in enumerate(layers):
            layer.batch_select_indices(picked if index < self._split else rows)
        return rows

    def _scores(self, hidden: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """Forward output → base logits → value-guided scores (S, V) float32."""
        logits = self._lm_head(hidden[layout.base_rows]).float()  # (S, V)
        guidance = self._guidance(logits, hidden, layout, layout.max_new_tokens - 1)  # the first token is pending
        return logits if guidance is None else apply_guidance(logits, guidance, layout.entries)

    def _guidance(
        self, logits: torch.Tensor, hidden: torch.Tensor, layout: _Layout, remaining: torch.Tensor
    ) -> Guidance | None:
        """What the steering heads add over each sequence's top-k; ``remaining`` (S,) tokens after this one."""
        stack = self._heads.stack
        if stack is None or layout.entries.empty:
            return None
        entries, top_k = layout.entries, layout.top_k
        return value_guidance(logits, hidden, self._embedding, stack, entries, top_k, layout.max_top_k, remaining)

    def _next_tokens(self, hidden: torch.Tensor, layout: _Layout, steps: torch.Tensor) -> StepOutput:
        """forward output → (perturb) → base logits → top-k → values → combine → sample, for every sequence."""
        base_hidden = hidden[layout.base_rows]  # (S, H)
        if layout.perturb is not None:
            base_hidden = layout.perturb.apply(base_hidden, steps)  # (S, H): AISP pre-logit shift
        logits = self._lm_head(base_hidden).float()  # (S, V)
        remaining = layout.max_new_tokens - steps - 1  # (S,) tokens each sequence may take after this one
        guidance = self._guidance(logits, hidden, layout, remaining)
        if guidance is not None:
            logits = apply_guidance(logits, guidance, layout.entries)  # (S, V)
        if layout.max_sample_top_k > 0:
            logits = filter_top_k(logits, layout.sample_top_k, layout.max_sample_top_k)  # (S, V)
        u = uniforms(layout.seeds, steps)  # (S,): counter = tokens this sequence sampled before
        tokens = sample_tokens(logits, layout.temperature, layout.top_p, u, use_top_p=layout.use_top_p)  # (S,)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (S,)
        pushes = (
            guidance.contributions(tokens, layout.entries)  # (M,)
            if guidance is not None
            else logits.new_zeros(0)
        )
        return StepOutput(tokens, logprobs, pushes, self._chunk_values(hidden, tokens, layout, remaining))

    def _chunk_values(
        self, hidden: torch.Tensor, tokens: torch.Tensor, layout: _Layout, remaining: torch.Tensor
    ) -> torch.Tensor:
        """Weighted explicit value of each sequence's sampled token (S,): what ivg ranks candidates by."""
        S = tokens.shape[0]
        if self._heads.stack is None or layout.scorers.empty:
            return torch.zeros(S, device=tokens.device)
        stack, scorers = self._heads.stack, layout.scorers
        return taken_values(hidden, tokens, self._embedding, stack, scorers, S, remaining)  # (S,)

    def next_token_scores(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """Guided scores of the first token of each request's sequences, computed from scratch (S, V).

        Rows are ordered like the sequences a request starts with (one for ``base``/``vas``, N for ``bon``
        and ``aisp``, B x C for ``ivg``; AISP's perturbation is not applied). Used to
        inspect steering and to check the cached decode loop against recomputation.
        """
        return self.open_batch().prefill_scores(requests)
