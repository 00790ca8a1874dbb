"""The batched decoding engine.

Every step runs ONE forward over all rows of the batch — for each sequence its
``__base__`` row plus one row per LoRA head it uses, each row with its own KV
cache entry — then, per sequence: base top-k → head values → combine → sample
→ append. Heads that no sequence uses cost nothing; ``linear`` heads read the
base row and add no row at all.

Requests are expanded into sequences by their method (``methods.py``): ``base``
and ``vas`` are one sequence each, ``bon`` is N sequences reduced to the best.
Dimension letters are listed in ``sampling.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from personalize.decoding.batch import DecodeBatch, RewardFn, SequenceOutput
from personalize.decoding.config import GenerationRequest, GenerationResult, StreamEvent
from personalize.decoding.rng import uniforms
from personalize.decoding.sampling import (
    ValueEntries,
    ValueStack,
    apply_guidance,
    filter_top_k,
    guide_scores,
    sample_tokens,
    value_guidance,
)
from personalize.errors import ContextLengthError, UnknownObjectiveError
from personalize.heads import HeadMeta, ValueHead, check_compatible
from personalize.lora import MultiLoRALinear, wrap_targets
from personalize.models import BaseModel


class StepOutput(NamedTuple):
    """One decode step's result for every live sequence."""

    tokens: torch.Tensor  # (S,) sampled token ids
    logprobs: torch.Tensor  # (S,) their log-probabilities under the final scores
    contributions: torch.Tensor  # (M,) each value entry's push on its sequence's sampled token


@dataclass
class _Layout:
    """Index tensors of the live batch; rebuilt only when its composition changes."""

    live: list[int]  # sequence numbers (into the run's outputs) still decoding, in row order
    row_slots: torch.Tensor  # (R,) LoRA slot per row, 0 = base
    row_sequence: torch.Tensor  # (R,) live position of each row's sequence
    base_rows: torch.Tensor  # (S,)
    entries: ValueEntries
    entry_owner: list[tuple[int, str]]  # (live position, objective) of each value entry
    temperature: torch.Tensor  # (S,)
    top_p: torch.Tensor  # (S,)
    top_k: torch.Tensor  # (S,)
    seeds: torch.Tensor  # (S,) int64
    sample_top_k: torch.Tensor  # (S,) 0 = no filter
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
        lora_heads = [name for name, h in heads.items() if h.meta.kind == "lora"]
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
        rank = max(h.meta.value_rank for h in heads.values())
        hidden = self.base.hidden_size
        down = torch.zeros(len(heads), rank, hidden)
        up = torch.zeros(len(heads), hidden, rank)
        inv_scale = torch.zeros(len(heads))
        for slot, head in enumerate(heads.values()):
            r = head.meta.value_rank
            down[slot, :r] = head.output.down.weight.detach().float().cpu()
            up[slot, :, :r] = head.output.up.weight.detach().float().cpu()
            inv_scale[slot] = 1.0 / head.meta.calibration.scale
        self._heads.stack = ValueStack(down.to(dev), up.to(dev), inv_scale.to(dev))

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

    def validate(self, request: GenerationRequest) -> None:
        """Raise the error a request would hit, before it joins a batch."""
        for name in request.personalization.weights:
            if name not in self._heads.heads:
                raise UnknownObjectiveError(name, self._heads.heads)
        limit = self.base.context_length
        need = len(request.prompt_ids) + request.sampling.max_new_tokens
        if need > limit:
            raise ContextLengthError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_new_tokens "
                f"({request.sampling.max_new_tokens}) = {need} exceeds the model's context of {limit} tokens"
            )

    def head_versions(self, objectives: Sequence[str]) -> dict[str, str]:
        return {name: self._heads.heads[name].meta.version for name in objectives}

    # ---- internals used by DecodeBatch --------------------------------------------------------
    def _layout(self, outputs: Sequence[SequenceOutput], live: list[int]) -> _Layout:
        """Index tensors for the sequences ``live`` (numbers into ``outputs``), rows grouped per sequence."""
        dev = self.base.device
        row_slots: list[int] = []
        row_sequence: list[int] = []
        base_rows: list[int] = []
        src: list[int] = []
        slots: list[int] = []
        seqs: list[int] = []
        coefs: list[float] = []
        owners: list[tuple[int, str]] = []
        for pos, number in enumerate(live):
            spec = outputs[number].spec
            base_row = len(row_slots)
            base_rows.append(base_row)
            row_slots.append(0)
            row_sequence.append(pos)
            for name, coef in spec.steer:
                lora = self._heads.lora_slot.get(name)
                if lora is None:
                    src.append(base_row)
                else:
                    src.append(len(row_slots))
                    row_slots.append(lora)
                    row_sequence.append(pos)
                slots.append(self._heads.value_slot[name])
                owners.append((pos, name))
                seqs.append(pos)
                coefs.append(coef)
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
            entries=ValueEntries(ints(src), ints(slots), ints(seqs), floats(coefs)),
            entry_owner=owners,
            temperature=floats([s.temperature for s in specs]),
            top_p=floats([s.top_p for s in specs]),
            top_k=ints([s.top_k for s in specs]),
            seeds=ints([s.seed for s in specs]),
            sample_top_k=ints([s.sample_top_k for s in specs]),
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
                past_key_values=cache,
                use_cache=True,
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
            past_key_values=cache,
            position_ids=positions,
            layer_idx=start,
        )
        rotary = decoder.rotary_emb(hidden, position_ids=positions)
        for layer in decoder.layers[start:stop]:
            hidden = layer(
                hidden,
                attention_mask=causal,
                position_embeddings=rotary,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
        return hidden

    def _prune(self, cache: DynamicCache, keep: torch.Tensor, layout: _Layout) -> None:
        """Drop finished sequences from the cache: lower layers hold sequences, upper layers rows."""
        rows = torch.isin(layout.row_sequence, keep).nonzero().squeeze(-1)  # (R',)
        if self._split is None:
            cache.batch_select_indices(rows)
            return
        layers: list[Any] = list(cache.layers)
        for index, layer in enumerate(layers):
            layer.batch_select_indices(keep if index < self._split else rows)

    def _scores(self, hidden: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """Forward output → base logits → value-guided scores (S, V) float32."""
        logits = self._lm_head(hidden[layout.base_rows]).float()  # (S, V)
        return guide_scores(
            logits, hidden, self._embedding, self._heads.stack, layout.entries, layout.top_k, layout.max_top_k
        )

    def _next_tokens(self, hidden: torch.Tensor, layout: _Layout, steps: torch.Tensor) -> StepOutput:
        """forward output → base logits → top-k → values → combine → sample, for every sequence."""
        logits = self._lm_head(hidden[layout.base_rows]).float()  # (S, V)
        guidance = None
        if self._heads.stack is not None and not layout.entries.empty:
            guidance = value_guidance(
                logits, hidden, self._embedding, self._heads.stack, layout.entries, layout.top_k, layout.max_top_k
            )
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
        return StepOutput(tokens, logprobs, pushes)

    def next_token_scores(self, requests: Sequence[GenerationRequest]) -> torch.Tensor:
        """Guided scores of the first token of each request's sequences, computed from scratch (S, V).

        Rows are ordered like the sequences (one per request, N for ``bon``). Used to
        inspect steering and to check the cached decode loop against recomputation.
        """
        return self.open_batch().prefill_scores(requests)
