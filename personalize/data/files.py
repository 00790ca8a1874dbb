"""Prompts from a user's file: JSON Lines (a ``prompt`` or a chat ``messages`` field) or plain text.

    read_prompts(path)        every prompt of the file, in order; PromptFileError says what is wrong
    prompt_text(prompt)       what a reward sees as the prompt (a chat's last user message)
    prompt_ids(base, prompt)  the token ids the model is given (a chat through its template)

A file whose name ends in ``.jsonl``, ``.ndjson`` or ``.json`` is JSON Lines; one ending in
``.txt`` is plain text; otherwise a first line that starts with ``{`` makes it JSON Lines.
Blank lines are skipped. In plain text each other line is one prompt.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from personalize.errors import ConfigError

if TYPE_CHECKING:
    from personalize.models import BaseModel

ROLES = ("system", "developer", "user", "assistant")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class PromptFileError(ConfigError):
    """A prompts file that is missing, empty or malformed (the message names the file and the line)."""


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation to answer: its messages, the last one from the user."""

    messages: tuple[tuple[str, str], ...]
    """(role, content) pairs in order."""

    @property
    def text(self) -> str:
        """The last user message: what the rewards score the answer against."""
        return self.messages[-1][1]

    def __str__(self) -> str:  # what a cache key built with ``default=str`` holds
        return json.dumps([list(m) for m in self.messages], ensure_ascii=False)


PromptInput = str | ChatPrompt


def prompt_text(prompt: PromptInput) -> str:
    return prompt.text if isinstance(prompt, ChatPrompt) else prompt


def prompt_ids(base: BaseModel, prompt: PromptInput) -> list[int]:
    """The model's input for ``prompt``: one user turn, or the whole conversation through the chat template."""
    if isinstance(prompt, ChatPrompt):
        return base.encode_chat([{"role": role, "content": content} for role, content in prompt.messages])
    return base.encode_prompt(prompt)


def _chat(where: str, messages: object) -> ChatPrompt:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise PromptFileError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
    pairs = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise PromptFileError(f"{where}: messages[{i}] is {type(message).__name__}, expected an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise PromptFileError(
                f"{where}: messages[{i}] needs a role in {', '.join(ROLES)} and a string content, "
                f"got role {role!r} and content of type {type(content).__name__}"
            )
        pairs.append((str(role), content))
    if pairs[-1][0] != "user" or not pairs[-1][1].strip():
        raise PromptFileError(f"{where}: the last message must be a non-empty one from the user")
    return ChatPrompt(tuple(pairs))


def _record(where: str, line: str) -> PromptInput:
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, Mapping):
        raise PromptFileError(f"{where} is a JSON {type(row).__name__}, expected an object with 'prompt' or 'messages'")
    if "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptFileError(f"{where}: 'prompt' must be a non-empty string, got {prompt!r}")
        return prompt
    if "messages" in row:
        return _chat(where, row["messages"])
    raise PromptFileError(f"{where} has neither 'prompt' nor 'messages'; its fields: {', '.join(map(str, row))}")


def _is_jsonl(path: Path, lines: Sequence[str]) -> bool:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return True
    if suffix == ".txt":
        return False
    return lines[0].lstrip().startswith("{")


def read_prompts(path: Path) -> list[PromptInput]:
    """Every prompt of ``path`` in file order (see the module docstring for the formats)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"prompts file {str(path)!r} does not exist") from None
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"prompts file {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise PromptFileError(f"cannot read prompts file {path}: {exc.strerror}") from None
    numbered = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not numbered:
        raise PromptFileError(
            f"prompts file {path} holds no prompts: give JSON Lines with a 'prompt' field, or one prompt per line"
        )
    if not _is_jsonl(path, [line for _, line in numbered]):
        return [line.strip() for _, line in numbered]
    return [_record(f"{path} line {n}", line) for n, line in numbered]
