"""A team's own inputs: prompts files, rewards by ``module:function`` or entry point, and the training
pipeline called as a library."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from personalize.data import ChatPrompt, PromptFileError, prompt_ids, read_prompts, select_prompts
from personalize.errors import ConfigError, RewardError
from personalize.models import BaseModel
from personalize.rewards import available_rewards, get_reward, load_reward, unregister_reward
from personalize.rewards.sources import ENTRY_POINT_GROUP, is_import_spec

# ---- prompts files ------------------------------------------------------------------------------


def test_jsonl_prompts_and_chat_messages(tmp_path: Path, tiny_base: BaseModel) -> None:
    path = tmp_path / "mine.jsonl"
    chat = [{"role": "system", "content": "Be formal."}, {"role": "user", "content": "Greet the board."}]
    rows = [{"prompt": "Write to a client."}, {"id": 2, "messages": chat}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    prompts = read_prompts(path)
    assert prompts[0] == "Write to a client."
    assert isinstance(prompts[1], ChatPrompt) and prompts[1].text == "Greet the board."
    assert prompt_ids(tiny_base, prompts[1]) == tiny_base.encode_chat(chat)  # the whole conversation
    assert prompt_ids(tiny_base, prompts[0]) == tiny_base.encode_prompt("Write to a client.")


def test_plain_text_is_one_prompt_per_line_and_limit_applies(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text("First prompt\n\n  Second prompt  \r\nThird {not json}\n")
    assert read_prompts(path) == ["First prompt", "Second prompt", "Third {not json}"]
    assert select_prompts(path, "train", limit=2) == ["First prompt", "Second prompt"]
    assert len(select_prompts(None, "eval", limit=3)) == 3  # the shipped set when no file is given
    other = tmp_path / "prompts"  # no suffix: a first line that is no JSON object makes it plain text
    other.write_text("just words\nmore words\n")
    assert read_prompts(other) == ["just words", "more words"]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.jsonl", "\n  \n", "holds no prompts"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": "cut\n', "bad.jsonl line 2 is not valid JSON"),
        ("field.jsonl", '{"text": "hi"}\n', "line 1 has neither 'prompt' nor 'messages'; its fields: text"),
        ("blank.jsonl", '{"prompt": "  "}\n', "'prompt' must be a non-empty string"),
        ("list.jsonl", "[1, 2]\n", "is a JSON list"),
        ("turn.jsonl", '{"messages": [{"role": "assistant", "content": "hi"}]}\n', "last message must be"),
        ("role.jsonl", '{"messages": [{"role": "bot", "content": "hi"}]}\n', "messages[0] needs a role in"),
    ],
)
def test_bad_prompts_files_say_what_and_where(tmp_path: Path, name: str, content: str, says: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptFileError, match=None) as caught:
        read_prompts(path)
    assert says in str(caught.value) and name in str(caught.value)
    assert isinstance(caught.value, ConfigError)


def test_a_missing_prompts_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="does not exist"):
        read_prompts(tmp_path / "nope.jsonl")


# ---- rewards by module:function and by entry point -------------------------------------------------


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module with a good scorer, one that raises and one that returns too few numbers."""
    name = f"team_rewards_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "def formality(prompts, responses):\n"
        "    return [float(r[:1].isupper()) + 0.1 * r.count('.') for r in responses]\n"
        "def broken(prompts, responses):\n"
        "    raise ValueError('no model here')\n"
        "def short(prompts, responses):\n"
        "    return [1.0]\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for spec in [s for s in available_rewards() if s.startswith(name)]:
        unregister_reward(spec)
    sys.modules.pop(name, None)


def test_module_function_rewards_are_imported_by_load_reward_only(reward_module: str) -> None:
    spec = f"{reward_module}:formality"
    assert is_import_spec(spec) and not is_import_spec("hf:/x") and not is_import_spec("concise")
    with pytest.raises(RewardError, match="load_reward"):
        get_reward(spec)  # a name alone never imports a module
    assert reward_module not in sys.modules
    reward = load_reward(spec)
    assert reward.name == spec
    assert reward(["p", "p"], ["Dear Sir.", "yo"]).tolist() == pytest.approx([1.1, 0.0])
    assert get_reward(spec) is reward  # registered in this process once imported


@pytest.mark.parametrize(
    ("attribute", "says"),
    [
        ("broken", "raised ValueError: no model here"),
        ("short", "returned shape (1,), expected (2,)"),
    ],
)
def test_a_failing_reward_names_itself(reward_module: str, attribute: str, says: str) -> None:
    spec = f"{reward_module}:{attribute}"
    with pytest.raises(RewardError) as caught:
        load_reward(spec)(["p", "q"], ["a", "b"])
    assert spec in str(caught.value) and says in str(caught.value)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("{module}:missing", "has no attribute 'missing'"),
        ("{module}:NOT_CALLABLE", "not a callable"),
    ],
)
def test_bad_module_function_specs_are_explained(reward_module: str, spec: str, says: str) -> None:
    with pytest.raises(RewardError, match=None) as caught:
        load_reward(spec.format(module=reward_module))
    assert says in str(caught.value)


def test_installed_packages_publish_rewards_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"published_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("def politeness(prompts, responses):\n    return [0.5] * len(responses)\n")
    info = tmp_path / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\npoliteness = {module}:politeness\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "politeness" in available_rewards()
    assert get_reward("politeness")(["p"], ["r"]).tolist() == [0.5]  # by its published name, no spec needed


# ---- head configs per kind ---------------------------------------------------------------------------


def test_head_configs_hold_only_their_kinds_options() -> None:
    from personalize.training import ImplicitHeadConfig, ValueHeadConfig, head_config

    value = head_config("linear", epochs=2, shaping="sentence", top_fraction=0.3)
    assert isinstance(value, ValueHeadConfig) and value.shaping == "sentence"
    assert value.train_config().kind == "linear"
    implicit = head_config("implicit", epochs=2, top_fraction=0.3, shaping="none", gamma=1.0)  # defaults dropped
    assert isinstance(implicit, ImplicitHeadConfig) and implicit.train_config().top_fraction == 0.3
    assert not hasattr(implicit, "shaping") and not hasattr(implicit, "stop_option")
    with pytest.raises(ConfigError, match="--shaping"):
        head_config("implicit", shaping="token")
    with pytest.raises(ConfigError, match="gamma applies to value heads"):
        head_config("implicit", gamma=0.9)
    with pytest.raises(ConfigError, match="stopping option trains value heads"):
        head_config("implicit", stop_option=True)
    with pytest.raises(ConfigError, match=r"shaping \(--shaping\) must be one of"):
        ValueHeadConfig(shaping="words")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kind must be one of"):
        head_config("tree")


# ---- the pipeline from Python ------------------------------------------------------------------------------


def test_train_runs_the_whole_pipeline_from_python(fresh_tiny_base: BaseModel, tmp_path: Path) -> None:
    from personalize.heads import load_head
    from personalize.store import ArtifactStore
    from personalize.training import RolloutSpec, TrainJob, ValueHeadConfig, train

    notes: list[str] = []

    class Notes:  # a reporter that only keeps the notes
        def note(self, message: str) -> None:
            notes.append(message)

        def task(self, label: str, total: float | None = None):  # type: ignore[no-untyped-def]
            from personalize.progress import Quiet

            return Quiet().task(label, total)

        def status(self, label: str):  # type: ignore[no-untyped-def]
            from contextlib import nullcontext

            return nullcontext()

    def periods(_prompts: list[str], responses: list[str]) -> list[float]:
        return [r.count(".") / 4 for r in responses]

    from personalize.rewards import CallableReward

    job = TrainJob(
        objective="formal",
        reward=CallableReward("periods", periods),
        out=tmp_path / "formal",
        prompts=["Write to a client.", ChatPrompt((("user", "Greet the board."),))],
        head=ValueHeadConfig(kind="linear", epochs=1, batch_size=2, shaping="sentence"),
        rollouts=RolloutSpec(samples_per_prompt=2, max_new_tokens=6, batch_size=4),
    )
    store = ArtifactStore(tmp_path / "data", Notes())
    result = train(job, fresh_tiny_base, store=store)
    head = load_head(tmp_path / "formal", fresh_tiny_base)
    assert head.meta.objective == "formal" and head.meta.reward == "periods" and head.meta.kind == "linear"
    training = head.meta.training
    assert training["rollouts_file"] == result.rollouts_file.name and training["prompts"] == 2
    assert training["shaping"] == "sentence" and "command" not in training
    assert result.rollouts_file.parent == tmp_path / "data" / "rollouts" and not notes
    again = train(job, fresh_tiny_base, store=store)  # same job: rollouts and shaped rewards read back
    assert again.rollouts_file == result.rollouts_file
    assert any("reusing 4 rollouts" in n for n in notes) and any("sentence-shaped rewards" in n for n in notes)
    with pytest.raises(ConfigError, match="needs at least one prompt"):
        TrainJob(objective="formal", reward="concise", out=tmp_path / "x", prompts=[])
