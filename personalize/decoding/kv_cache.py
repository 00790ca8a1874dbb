"""Key/value storage of a running batch: one slot per row, each with its own length.

A pool holds the keys and values of some layers for a number of slots. The live slots are
always ``0 .. n-1``: slot i is row i of the batch (or sequence i, for the layers below the
lowest adapter, which all rows of a sequence share). A slot keeps its positions from column 0
up to its own length; nothing is padded on the left and no column is shared between slots, so

- a step writes one column per row in place (no copy of the cache, whatever its length);
- a row that leaves frees its slot: the rows after it move up (a copy of those rows only);
- a row can be cut back to any shorter length (a rejected speculative chunk) by lowering its
  length: the stale columns are overwritten by the next writes and never read meanwhile;
- a child (a search branch, a sample sharing its prompt) starts as a copy of its parent's slot.

The allocation follows the live work: it grows in blocks of ``BLOCK`` positions and by half again in slots,
and shrinks once the longest live row is two blocks shorter than it (or a quarter of the slots
are in use), so memory is proportional to what is live, never to how long the batch has run.

Layout per layer: keys (slots, positions, kv_heads, head_dim): a row's new column is one
``index_copy_`` into the flattened (slots x positions) axis; attention reads the transposed
view (slots, kv_heads, positions, head_dim) without copying.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BLOCK = 64
"""Positions are allocated in blocks of this many: a pool holds at most 2 x BLOCK - 1 positions
more than its longest live row."""


def _round_up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)


class KVPool:
    """Keys and values of ``num_layers`` layers for the live slots of a batch."""

    def __init__(
        self, num_layers: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.num_layers = num_layers
        self.kv_heads = kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device
        self.lengths: list[int] = []
        """Positions each live slot holds (its next token is written at this column)."""
        self.keys: list[torch.Tensor] = []  # per layer (slots, positions, kv_heads, head_dim)
        self.values: list[torch.Tensor] = []
        self._allocate(0, 0)

    # ---- size -------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        """Live slots (rows)."""
        return len(self.lengths)

    @property
    def capacity(self) -> tuple[int, int]:
        """Allocated (slots, positions) per layer."""
        return (int(self.keys[0].shape[0]), int(self.keys[0].shape[1])) if self.keys else (0, 0)

    @property
    def positions(self) -> int:
        """Allocated positions per slot: at most the longest live row plus ``2 * BLOCK - 1``."""
        return self.capacity[1]

    @property
    def live_tokens(self) -> int:
        """Positions the live slots hold, summed."""
        return sum(self.lengths)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def _allocate(self, slots: int, positions: int) -> None:
        """(Re)allocate to (slots, positions), keeping what the live slots hold."""
        have_slots, have_positions = self.capacity
        keep_slots = min(self.slots, slots, have_slots)
        keep_positions = min(max(self.lengths, default=0), positions, have_positions)
        shape = (slots, positions, self.kv_heads, self.head_dim)
        fresh_keys, fresh_values = [], []
        for layer in range(self.num_layers):
            # zeros, not empty: masked-out columns are still multiplied by 0 in attention (0 * NaN = NaN)
            keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
            values = torch.zeros(shape, dtype=self.dtype, device=self.device)
            if keep_slots and keep_positions:
                keys[:keep_slots, :keep_positions] = self.keys[layer][:keep_slots, :keep_positions]
                values[:keep_slots, :keep_positions] = self.values[layer][:keep_slots, :keep_positions]
            fresh_keys.append(keys)
            fresh_values.append(values)
        self.keys, self.values = fresh_keys, fresh_values

    def reserve(self, slots: int, positions: int) -> None:
        """Make room for ``slots`` live slots holding up to ``positions`` each (grows in blocks)."""
        have_slots, have_positions = self.capacity
        if slots <= have_slots and positions <= have_positions:
            return
        if slots > have_slots:  # half as many again: admitting S sequences one by one reallocates O(log S) times
            slots = max(slots, have_slots + have_slots // 2)
        self._allocate(max(have_slots, _round_up(slots, 8)), max(have_positions, _round_up(positions, BLOCK)))

    def trim(self) -> None:
        """Give back what the live slots no longer need (called after rows leave)."""
        have_slots, have_positions = self.capacity
        need_positions = _round_up(max(self.lengths, default=0), BLOCK)
        need_slots = _round_up(self.slots, 8)
        if have_positions - need_positions >= 2 * BLOCK or (have_slots > 8 and self.slots <= have_slots // 4):
            self._allocate(min(have_slots, max(need_slots, 2 * self.slots)), min(have_positions, need_positions))

    # ---- membership -------------------------------------------------------------------------
    def append(self, count: int) -> list[int]:
        """``count`` new empty slots after the live ones; returns their numbers."""
        first = self.slots
        self.lengths.extend([0] * count)
        self.reserve(self.slots, max(self.lengths, default=0))
        return list(range(first, first + count))

    def select(self, sources: Sequence[int]) -> None:
        """New live slots: slot i takes what old slot ``sources[i]`` held (repeats allowed: copies).

        Only slots whose content changes are copied, and only up to the longest of them.
        """
        lengths = [self.lengths[s] for s in sources]
        moves = [(dst, src) for dst, src in enumerate(sources) if dst != src]
        self.reserve(len(sources), max(lengths, default=0))
        if moves:
            dst = torch.tensor([d for d, _ in moves], dtype=torch.long, device=self.device)
            src = torch.tensor([s for _, s in moves], dtype=torch.long, device=self.device)
            span = max(lengths[d] for d, _ in moves)
            for layer in range(self.num_layers):
                # the right side is gathered before it is written: overlapping moves are safe
                self.keys[layer][dst, :span] = self.keys[layer][src, :span]
                self.values[layer][dst, :span] = self.values[layer][src, :span]
        self.lengths = lengths

    def truncate(self, slot: int, length: int) -> None:
        """Forget slot ``slot``'s positions from ``length`` on (they are overwritten before any read)."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"slot {slot} holds {self.lengths[slot]} positions; cannot cut it to {length}")
        self.lengths[slot] = length

    # ---- per step ---------------------------------------------------------------------------
    def write(self, layer: int, flat_index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store new keys/values (N, kv_heads, head_dim) at ``flat_index`` (N,) = slot * positions + column."""
        self.keys[layer].view(-1, self.kv_heads, self.head_dim).index_copy_(0, flat_index, keys)
        self.values[layer].view(-1, self.kv_heads, self.head_dim).index_copy_(0, flat_index, values)

    def view(self, layer: int, slots: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of live slots ``0..slots-1``, columns ``0..positions-1``: (slots, kv, positions, d)."""
        keys = self.keys[layer][:slots, :positions].transpose(1, 2)
        values = self.values[layer][:slots, :positions].transpose(1, 2)
        return keys, values

    def gather(self, layer: int, slots: torch.Tensor, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for chosen slots (a copy): (len(slots), kv, positions, d)."""
        keys = self.keys[layer][slots, :positions].transpose(1, 2)
        values = self.values[layer][slots, :positions].transpose(1, 2)
        return keys, values

    def advance(self, counts: Sequence[int]) -> None:
        """Each live slot took ``counts[i]`` new positions this step."""
        self.lengths = [length + n for length, n in zip(self.lengths, counts, strict=True)]


def fill_holes(alive: Sequence[bool]) -> list[int]:
    """Sources that keep the alive slots in place and fill each hole below the new end with an alive
    slot from the end: ``[T, T, F, T, F, T]`` -> ``[0, 1, 5, 3]`` (one slot moves, not three)."""
    survivors = [slot for slot, keep in enumerate(alive) if keep]
    n = len(survivors)
    tail = [slot for slot in survivors if slot >= n]  # alive beyond the new end: they move down
    sources = []
    for slot in range(n):
        sources.append(slot if alive[slot] else tail.pop(0))
    return sources


class BatchCache:
    """The KV cache of a running batch: sequences in the shared bottom layers, rows above them.

    Sequence slot i holds sequence i of the batch for layers ``0 .. split-1``; row slot j holds row j
    (a sequence's base row or one of its adapter rows) for layers ``split ..``. ``row_sequence[j]``
    is the sequence slot of row j and ``row_adapter[j]`` its LoRA slot (0: the base row).
    """

    def __init__(
        self, num_layers: int, split: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype, device: torch.device
    ) -> None:
        self.split = split
        self.sequences = KVPool(split, kv_heads, head_dim, dtype=dtype, device=device)
        self.rows = KVPool(num_layers - split, kv_heads, head_dim, dtype=dtype, device=device)
        self.row_sequence: list[int] = []
        self.row_adapter: list[int] = []

    @property
    def lengths(self) -> list[int]:
        """Positions each live sequence holds."""
        return self.sequences.lengths

    @property
    def positions(self) -> int:
        """Allocated positions per slot (the longest the cache could hold without growing)."""
        return max(self.sequences.positions, self.rows.positions)

    @property
    def nbytes(self) -> int:
        return self.sequences.nbytes + self.rows.nbytes

    @property
    def live_tokens(self) -> int:
        """Positions held by live slots, rows of the upper layers and sequences of the lower ones."""
        return self.sequences.live_tokens + self.rows.live_tokens

    def append(self, adapters: Sequence[int]) -> int:
        """A new empty sequence with one row per LoRA slot in ``adapters`` (0 first); its sequence slot."""
        (slot,) = self.sequences.append(1)
        self.rows.append(len(adapters))
        self.row_sequence.extend([slot] * len(adapters))
        self.row_adapter.extend(adapters)
        return slot

    def select(self, sources: Sequence[int]) -> list[int]:
        """New sequence slots: slot i continues old slot ``sources[i]`` (a repeat is a copy: a fork).

        Rows follow their sequences; the first occurrence of a sequence keeps its rows where they
        are (holes are filled from the end), later occurrences get copies appended. Returns the
        old row slot of each new row.
        """
        first: dict[int, int] = {}
        for new, old in enumerate(sources):
            first.setdefault(old, new)
        alive = [seq in first for seq in self.row_sequence]
        row_sources = fill_holes(alive)
        row_sequence = [first[self.row_sequence[r]] for r in row_sources]
        for new, old in enumerate(sources):
            if first[old] != new:
                copies = [r for r, seq in enumerate(self.row_sequence) if seq == old]
                row_sources.extend(copies)
                row_sequence.extend([new] * len(copies))
        self.sequences.select(sources)
        self.rows.select(row_sources)
        self.row_adapter = [self.row_adapter[r] for r in row_sources]
        self.row_sequence = row_sequence
        return row_sources

    def reserve(self, counts: Sequence[int]) -> None:
        """Make room for ``counts[i]`` more positions in sequence slot i (and its rows)."""
        longest = max((length + n for length, n in zip(self.lengths, counts, strict=True)), default=0)
        self.sequences.reserve(self.sequences.slots, longest)
        self.rows.reserve(self.rows.slots, longest)

    def advance(self, counts: Sequence[int]) -> None:
        """Sequence i took ``counts[i]`` positions this step (and so did its rows)."""
        self.sequences.advance(counts)
        self.rows.advance([counts[seq] for seq in self.row_sequence])

    def truncate(self, sequence: int, length: int) -> None:
        """Cut a sequence (and its rows) back to ``length`` positions."""
        self.sequences.truncate(sequence, length)
        for row, seq in enumerate(self.row_sequence):
            if seq == sequence:
                self.rows.truncate(row, length)

    def trim(self) -> None:
        self.sequences.trim()
        self.rows.trim()
