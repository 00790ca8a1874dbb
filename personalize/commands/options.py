"""What several commands share: the base-model and head options, number-list parsing, errors, output.

A command that loads a base model takes :data:`BaseModelOpt` and calls :func:`load_base`; one that
loads heads takes :data:`HeadsOpt` and calls :func:`load_heads`. A new way of choosing the model
(a remote one, say) is added here once, not in every command.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from personalize.decoding import Engine
    from personalize.heads import ValueHead
    from personalize.models import BaseModel
    from personalize.remote.engine import RemoteEngine
    from personalize.rewards import RewardFunction
    from personalize.settings import Settings

console = Console()
err = Console(stderr=True)

BaseModelOpt = Annotated[
    str | None,
    typer.Option("--base-model", help="Hugging Face id, local directory, or 'embedded' (default: settings)."),
]
HeadsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--heads",
        help="Head directory, or a folder of head directories (repeatable). "
        "Default: the shipped heads plus DATA_DIR/heads.",
    ),
]
RemoteUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--remote-url",
        help="An OpenAI-compatible server (vLLM, ...) running the base model; the local model (--base-model) "
        "carries the heads and must share its tokenizer. Default: PERSONALIZE_REMOTE_URL.",
    ),
]
RemoteModelOpt = Annotated[
    str | None,
    typer.Option("--remote-model", help="The model name the upstream serves. Default: PERSONALIZE_REMOTE_MODEL."),
]
PromptsOpt = Annotated[
    Path | None,
    typer.Option(
        "--prompts",
        help="Prompts file: JSON Lines with a 'prompt' (or chat 'messages') field, or plain text, one prompt "
        "per line. Default: the prompt set shipped in the package.",
    ),
]


def settings() -> Settings:
    """The settings, read from the environment (the only place commands read it)."""
    from personalize.settings import Settings

    return Settings()


def load_base(config: Settings, base_model: str | None) -> BaseModel:
    """The base model named on the command line, else by the settings, in the settings' dtype."""
    from personalize.models import load_base_model, set_threads

    set_threads(config.threads)
    return load_base_model(base_model or config.base_model, data_dir=config.data_dir, dtype=config.torch_dtype)


def with_remote(config: Settings, remote_url: str | None, remote_model: str | None) -> Settings:
    """The settings with the command line's remote options applied (they win over the environment)."""
    update = {k: v for k, v in (("remote_url", remote_url), ("remote_model", remote_model)) if v}
    return config.model_copy(update=update) if update else config


def build_engine(config: Settings, base: BaseModel, heads: list[ValueHead]) -> Engine | RemoteEngine:
    """A local engine over ``base`` and ``heads``; with a remote URL set, the engine that steers the upstream."""
    from personalize.decoding import Engine
    from personalize.remote.setup import remote_engine

    local = Engine(base, heads)
    return remote_engine(config, local) if config.remote_url else local


def head_dirs(heads: list[Path] | None, data_dir: Path) -> list[Path]:
    """The head folders given, else the shipped heads and DATA_DIR/heads."""
    from personalize.heads import SHIPPED_HEADS_DIR, discover_heads

    return discover_heads(list(heads) if heads else [SHIPPED_HEADS_DIR, data_dir / "heads"])


def load_heads(
    base: BaseModel, wanted: set[str], heads: list[Path] | None, data_dir: Path
) -> tuple[list[ValueHead], list[str]]:
    """The heads found (as :func:`head_dirs` finds them) whose objective is wanted, and the wanted ones missing."""
    from personalize.heads import HEAD_JSON, load_head

    def objective_of(folder: Path) -> str | None:  # from head.json alone: weights are read only for wanted heads
        try:
            return str(json.loads((folder / HEAD_JSON).read_text())["objective"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: load_head below says what is wrong with it

    folders = [f for f in head_dirs(heads, data_dir) if objective_of(f) in (*wanted, None)]
    loaded = [h for h in (load_head(f, base) for f in folders) if h.objective in wanted]
    return loaded, sorted(wanted - {h.objective for h in loaded})


def parse_weights(text: str) -> dict[str, float]:
    """``concise=1,helpful=0.5`` -> ``{"concise": 1.0, "helpful": 0.5}``."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"expected NAME=NUMBER pairs separated by commas, got {part!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(f"weight for {name.strip()!r} is not a number: {value!r}") from None
    return weights


def parse_floats(option: str, text: str) -> tuple[float, ...]:
    """``1,4,16`` -> ``(1.0, 4.0, 16.0)``; a clear error naming ``option`` for anything else."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            values.append(float(part))
        except ValueError:
            raise typer.BadParameter(f"{option} takes numbers separated by commas, got {part!r}") from None
    return tuple(values)


def parse_pairs(text: str) -> dict[str, str]:
    """``concise=concise-sft,helpful=helpful-sft`` -> ``{"concise": "concise-sft", ...}``."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise typer.BadParameter(f"expected OBJECTIVE=HEAD pairs separated by commas, got {part!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def fail(exc: Exception) -> typer.Exit:
    """Print ``exc`` as the command's error; the caller raises the returned exit (code 2)."""
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(code=2)


@contextmanager
def cwd_importable() -> Iterator[None]:
    """The current directory on the import path for the block, as ``python -m`` would have it (a console
    script does not), so that ``--reward my_rewards:formality`` finds ``./my_rewards.py``."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def reward_from_option(spec: str) -> RewardFunction:
    """``--reward``: a name, ``hf:<dir>``, an installed entry point, or ``module:function`` (imported)."""
    from personalize.rewards import load_reward

    with cwd_importable():
        return load_reward(spec)


def import_head_rewards(heads: list[ValueHead]) -> None:
    """Make the ``module:function`` rewards the heads name available by name in this process (the
    command line runs a user's own code; the service never imports what a head names)."""
    from personalize.rewards import available_rewards, load_reward
    from personalize.rewards.sources import is_import_spec

    known = set(available_rewards())
    with cwd_importable():
        for head in heads:
            name = head.meta.reward_name
            if is_import_spec(name) and name not in known:
                load_reward(name)
                known.add(name)
