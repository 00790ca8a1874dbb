"""The model runner: one forward over the packed new tokens of every live sequence.

A step feeds each live sequence a run of new tokens at its next positions: one token for a
sequence that is decoding, a chunk of its prompt for one that is joining (chunked prefill rides
in the same forward as the decoding rows). Tokens are packed along one axis N, so the
projections read every weight once per step for all of them:

    embed (N, H) -> layers below ``split``, per sequence -> fan out to each sequence's rows
    (N_r, H) -> adapted layers, per row (each row's LoRA delta masked in) -> each row's last
    token -> final norm (R, H)

Attention writes each token's key/value into its slot of the batch's :class:`BatchCache` and
reads the slot's positions ``0 .. own length``: decoding rows together in one call, masked to
their own lengths; a prompt chunk on its own, causally. Nothing here samples, ranks or touches
a request: tensors and the cache in, hidden states out.

Dimension letters: N packed tokens (of sequences, or of rows above the split), S sequences,
R rows, H hidden, V vocabulary, D decoding slots, C adapter columns, d head dim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from personalize.decoding.backbone import Backbone, LayerWeights
from personalize.decoding.head_set import AdapterGroup, HeadSet
from personalize.decoding.kv_cache import BatchCache, KVPool


@dataclass(frozen=True)
class StageInputs:
    """Where one stage's (sequences' or rows') packed tokens go, for every layer of the stage."""

    flat_index: torch.Tensor  # (N,) slot * allocated positions + position: where keys/values are written
    cos: torch.Tensor  # (N, 1, d) rotary embedding of each token's position
    sin: torch.Tensor  # (N, 1, d), its first half negated (see _rotate)
    decode_tokens: torch.Tensor | None  # (D,) tokens that are their slot's only new token (None: none)
    decode_slots: torch.Tensor | None  # (D,) their slots; None when they are slots 0..D-1 in order
    decode_mask: torch.Tensor | None  # (D, 1, 1, L) which positions each reads
    decode_length: int  # L: the longest decoding slot after this step's write
    all_decode: bool  # every token decodes, token i in slot i: no gather, no scatter
    extends: tuple[tuple[int, int, int, int], ...]  # (first token, tokens, slot, positions before) per prompt chunk


@dataclass(frozen=True)
class StepAdapters:
    """The adapters in use by the batch's rows and, per step, each row token's mask over their columns."""

    groups: tuple[Mapping[str, AdapterGroup], ...]  # per layer, restricted to the LoRA slots in use
    masks: Mapping[int, torch.Tensor]  # id(group.slot) -> (N_r, C) 1.0 where the token's row uses the column


def stage_inputs(
    pool: KVPool, slots: Sequence[int], counts: Sequence[int], cos: torch.Tensor, sin: torch.Tensor
) -> StageInputs:
    """Index tensors for tokens packed slot by slot (``counts[i]`` new tokens for slot ``slots[i]``)."""
    dev = cos.device
    _, allocated = pool.capacity
    flat: list[int] = []
    decode_tok: list[int] = []
    decode_slot: list[int] = []
    decode_len: list[int] = []
    extends: list[tuple[int, int, int, int]] = []
    start = 0
    for slot, count in zip(slots, counts, strict=True):
        past = pool.lengths[slot]
        flat.extend(slot * allocated + past + i for i in range(count))
        if count == 1:
            decode_tok.append(start)
            decode_slot.append(slot)
            decode_len.append(past + 1)
        elif count > 1:
            extends.append((start, count, slot, past))
        start += count
    length = max(decode_len, default=0)
    all_decode = not extends and decode_tok == list(range(len(decode_tok))) and decode_slot == decode_tok
    mask = None
    if decode_tok:
        lengths = torch.tensor(decode_len, device=dev)
        mask = (torch.arange(length, device=dev) < lengths.unsqueeze(-1))[:, None, None, :]  # (D, 1, 1, L)

    def ints(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=dev)

    return StageInputs(
        flat_index=ints(flat),
        cos=cos,
        sin=sin,
        decode_tokens=ints(decode_tok) if decode_tok and not all_decode else None,
        decode_slots=ints(decode_slot) if decode_tok and decode_slot != list(range(len(decode_slot))) else None,
        decode_mask=mask,
        decode_length=length,
        all_decode=all_decode,
        extends=tuple(extends),
    )


class ModelRunner:
    """Runs the frozen backbone (its weights taken once) over packed tokens and a batch's KV cache."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def new_cache(self, heads: HeadSet) -> BatchCache:
        bb = self.backbone
        return BatchCache(bb.num_layers, heads.split, bb.kv_heads, bb.head_dim, dtype=bb.dtype, device=bb.device)

    def adapters(self, heads: HeadSet, active: Sequence[int]) -> tuple[Mapping[str, AdapterGroup], ...]:
        """Each layer's adapter groups restricted to the LoRA slots ``active`` (empty: no adapter runs)."""
        if not active:
            return tuple({} for _ in heads.adapters)
        wanted = torch.tensor(sorted(set(active)), device=self.backbone.device)
        shared: dict[int, torch.Tensor] = {}  # equal column layouts keep sharing one slot tensor (one mask)
        layers = []
        for groups in heads.adapters:
            kept: dict[str, AdapterGroup] = {}
            for name, group in groups.items():
                restricted = group.restrict(wanted)
                if restricted is None:
                    continue
                slot = shared.setdefault(id(group.slot), restricted.slot)
                kept[name] = AdapterGroup(restricted.down, restricted.up, slot)
            layers.append(kept)
        return tuple(layers)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head scores of final hidden states: (B, H) -> (B, V) float32."""
        return self.backbone.lm_head(hidden).float()

    def forward(
        self,
        cache: BatchCache,
        token_ids: torch.Tensor,
        counts: Sequence[int],
        adapters: tuple[Mapping[str, AdapterGroup], ...],
    ) -> torch.Tensor:
        """Feed ``counts[i]`` new tokens to sequence slot i (``token_ids`` (N,) packed in slot order).

        Returns the final hidden state of every row's last new token (R, H); a row whose sequence
        got no token this step gets zeros. The cache's lengths advance by ``counts``.
        """
        x, row_counts = self._run(cache, token_ids, counts, adapters)  # (N_r, H)
        ends = _cumsum(row_counts)
        active = [r for r, n in enumerate(row_counts) if n > 0]
        hidden = x.new_zeros(len(row_counts), self.backbone.hidden_size)  # (R, H)
        if active:
            last = torch.tensor([ends[r] - 1 for r in active], dtype=torch.long, device=x.device)  # (R',)
            hidden[active] = self.backbone.rms_norm(x[last], self.backbone.norm)
        return hidden

    def forward_all(
        self,
        cache: BatchCache,
        token_ids: torch.Tensor,
        counts: Sequence[int],
        adapters: tuple[Mapping[str, AdapterGroup], ...],
    ) -> tuple[torch.Tensor, list[int]]:
        """As :meth:`forward`, but the final hidden state after every new token of every row:
        (N_r, H) packed row by row in row-slot order, and how many tokens each row got."""
        x, row_counts = self._run(cache, token_ids, counts, adapters)
        return self.backbone.rms_norm(x, self.backbone.norm), row_counts

    def _run(
        self,
        cache: BatchCache,
        token_ids: torch.Tensor,
        counts: Sequence[int],
        adapters: tuple[Mapping[str, AdapterGroup], ...],
    ) -> tuple[torch.Tensor, list[int]]:
        """The layers over the packed tokens: (N_r, H) before the final norm, and each row's token count."""
        bb = self.backbone
        S, split = len(counts), cache.split
        cache.reserve(counts)
        positions = torch.tensor(
            [cache.lengths[s] + i for s in range(S) for i in range(counts[s])], device=bb.device
        )  # (N,)
        cos, sin = bb.rotary(bb.embed[:1], positions.unsqueeze(0))  # (1, N, d)
        half = bb.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # the sign of rotate_half, folded in
        cos, sin = cos[0].unsqueeze(1).to(bb.dtype), sin[0].unsqueeze(1).to(bb.dtype)  # (N, 1, d)
        x = F.embedding(token_ids, bb.embed)  # (N, H)
        if split:
            stage = stage_inputs(cache.sequences, range(S), counts, cos, sin)
            for layer in range(split):
                x = self._layer(x, bb.layers[layer], cache.sequences, layer, stage, {}, {})
        starts = [end - n for end, n in zip(_cumsum(counts), counts, strict=True)]
        fanout = [starts[s] + i for s in cache.row_sequence for i in range(counts[s])]
        row_counts = [counts[s] for s in cache.row_sequence]
        fan = torch.tensor(fanout, dtype=torch.long, device=bb.device)  # (N_r,)
        x = x[fan]  # (N_r, H)
        if split < bb.num_layers:
            stage = stage_inputs(cache.rows, range(len(row_counts)), row_counts, cos[fan], sin[fan])
            masks = self._masks(cache, row_counts, adapters)
            for layer in range(split, bb.num_layers):
                groups = adapters[layer]
                x = self._layer(x, bb.layers[layer], cache.rows, layer - split, stage, groups, masks)
        cache.advance(counts)
        return x, row_counts

    def _masks(
        self, cache: BatchCache, row_counts: Sequence[int], adapters: tuple[Mapping[str, AdapterGroup], ...]
    ) -> dict[int, torch.Tensor]:
        """Per distinct column layout, each row token's 0/1 mask over the adapter columns (N_r, C)."""
        token_slot = torch.tensor(
            [a for a, n in zip(cache.row_adapter, row_counts, strict=True) for _ in range(n)],
            dtype=torch.long,
            device=self.backbone.device,
        )  # (N_r,)
        masks: dict[int, torch.Tensor] = {}
        for groups in adapters:
            for group in groups.values():
                if id(group.slot) not in masks:
                    masks[id(group.slot)] = (token_slot.unsqueeze(-1) == group.slot).float()
        return masks

    def _project(
        self, x: torch.Tensor, weights: LayerWeights, name: str, groups: Mapping[str, AdapterGroup], masks: Mapping
    ) -> torch.Tensor:
        out: torch.Tensor = getattr(weights, name)(x)  # (N, out)
        group = groups.get(name)
        if group is not None:
            out = out + group.delta(x, masks[id(group.slot)])  # (N, out)
        return out

    def _layer(
        self,
        x: torch.Tensor,
        weights: LayerWeights,
        pool: KVPool,
        layer: int,
        stage: StageInputs,
        groups: Mapping[str, AdapterGroup],
        masks: Mapping[int, torch.Tensor],
    ) -> torch.Tensor:
        """One decoder layer on packed tokens x (N, H); writes their keys/values to ``pool``."""
        bb = self.backbone
        N = x.shape[0]
        nh, kvh, d = bb.num_heads, bb.kv_heads, bb.head_dim
        h = bb.rms_norm(x, weights.attn_norm)  # (N, H)
        qkv = self._project(h, weights, "qkv", groups, masks).view(N, nh + 2 * kvh, d)  # (N, nh+2kv, d)
        v = qkv[:, nh + kvh :]  # (N, kv, d)
        if weights.q_norm is not None and weights.k_norm is not None:  # per-head norms: rotate q and k apart
            q = _rotate(bb.rms_norm(qkv[:, :nh], weights.q_norm), stage)
            k = _rotate(bb.rms_norm(qkv[:, nh : nh + kvh], weights.k_norm), stage)
        else:  # one rotation for the queries and keys together
            qk = _rotate(qkv[:, : nh + kvh], stage)  # (N, nh+kv, d)
            q, k = qk[:, :nh], qk[:, nh:]
        pool.write(layer, stage.flat_index, k, v)
        attended = self._attend(q, pool, layer, stage).reshape(N, nh * d)  # (N, nh*d)
        x = x + self._project(attended, weights, "o", groups, masks)  # (N, H)
        h = bb.rms_norm(x, weights.mlp_norm)
        gate, up = self._project(h, weights, "gate_up", groups, masks).chunk(2, dim=-1)  # (N, I) each
        return x + self._project(bb.act(gate) * up, weights, "down", groups, masks)  # (N, H)

    def _attend(self, q: torch.Tensor, pool: KVPool, layer: int, stage: StageInputs) -> torch.Tensor:
        """Each token attends its slot's positions up to its own: q (N, nh, d) -> (N, nh, d)."""
        scale = self.backbone.scaling
        if stage.all_decode:  # the steady state: token i is slot i's only new token
            keys, values = pool.view(layer, q.shape[0], stage.decode_length)  # (D, kv, L, d)
            out = F.scaled_dot_product_attention(
                q.unsqueeze(2), keys, values, attn_mask=stage.decode_mask, scale=scale, enable_gqa=True
            )  # (D, nh, 1, d)
            return out.squeeze(2)
        out = torch.empty_like(q)  # (N, nh, d)
        if stage.decode_mask is not None:
            picked = stage.decode_tokens
            assert picked is not None
            D = picked.shape[0]
            if stage.decode_slots is None:
                keys, values = pool.view(layer, D, stage.decode_length)
            else:
                keys, values = pool.gather(layer, stage.decode_slots, stage.decode_length)  # (D, kv, L, d)
            decoded = F.scaled_dot_product_attention(
                q[picked].unsqueeze(2), keys, values, attn_mask=stage.decode_mask, scale=scale, enable_gqa=True
            )  # (D, nh, 1, d)
            out[picked] = decoded.squeeze(2)
        for first, count, slot, past in stage.extends:
            keys, values = pool.view(layer, slot + 1, past + count)
            keys, values = keys[slot : slot + 1], values[slot : slot + 1]  # (1, kv, past+count, d)
            chunk = q[first : first + count].transpose(0, 1).unsqueeze(0)  # (1, nh, count, d)
            if past == 0:
                attended = F.scaled_dot_product_attention(
                    chunk, keys, values, is_causal=True, scale=scale, enable_gqa=True
                )
            else:  # query i sits at position past + i and reads positions 0 .. past + i
                causal = torch.ones(count, past + count, dtype=torch.bool, device=q.device).tril(past)
                attended = F.scaled_dot_product_attention(
                    chunk, keys, values, attn_mask=causal, scale=scale, enable_gqa=True
                )
            out[first : first + count] = attended[0].transpose(0, 1)  # (count, nh, d)
        return out


def _rotate(x: torch.Tensor, stage: StageInputs) -> torch.Tensor:
    """Rotary embedding as the Llama family applies it, ``x cos + rotate_half(x) sin``: (N, heads, d).

    ``rotate_half(x) = (-x2, x1)`` is the halves swapped (a roll) with the first half negated, which
    ``stage.sin`` carries already (its first half is stored negated)."""
    return x * stage.cos + x.roll(x.shape[-1] // 2, dims=-1) * stage.sin


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for value in values:
        total += value
        out.append(total)
    return out
