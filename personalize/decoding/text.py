"""Token ids to streamed text: incremental detokenization and stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase


@dataclass
class TextStream:
    """Turns a growing list of token ids into text deltas; holds back what a stop string may still claim.

    Decoding only a small window (``prefix_offset``..end) keeps each step O(1) in the
    length of the answer; an incomplete UTF-8 character (``\\ufffd`` at the end) waits
    for the next token.
    """

    tokenizer: PreTrainedTokenizerBase
    stop: Sequence[str] = ()
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    _prefix_offset: int = 0
    _read_offset: int = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show (possibly empty)."""
        self.token_ids.append(token_id)
        prefix = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.token_ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.token_ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush whatever is held back (the answer ended)."""
        return self._release(final=True)

    def _release(self, *, final: bool) -> str:
        if self.stop and not self.stopped:
            search_from = max(0, self.emitted - max(len(s) for s in self.stop))
            hits = [i for s in self.stop if (i := self.text.find(s, search_from)) >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
        if final or self.stopped or not self.stop:
            safe = len(self.text)
        else:
            # Keep back a tail that could be the start of a stop string.
            hold = max(len(s) for s in self.stop) - 1
            safe = max(self.emitted, len(self.text) - hold)
        delta = self.text[self.emitted : safe]
        self.emitted = safe
        return delta
