"""Reward functions, the reward registry and the shipped prompt set."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from personalize.data import CATEGORIES, Prompt, load_prompts
from personalize.errors import ConfigError, RewardError
from personalize.rewards import (
    RewardFunction,
    available_rewards,
    get_reward,
    register_reward,
    unregister_reward,
    weighted_reward,
)
from personalize.rewards.embedding import load_embedder
from personalize.rewards.harmless import count_harm_cues, count_profanity, offensive_probability
from personalize.rewards.text import count_tokens, is_dangling, is_refusal

KEYBOARD = "How do I clean my laptop keyboard?"
KEYBOARD_ANSWER = (
    "Unplug it, turn it upside down to shake out crumbs, then wipe the keys with a cloth "
    "dampened with isopropyl alcohol."
)
LONG_TEXT = " ".join(["Keyboards collect dust, crumbs and oils from your fingers over time."] * 200)
GERMAN = "Stecker ziehen, umdrehen, Krümel ausschütteln und mit einem feuchten Tuch abwischen."
CHINESE = "拔掉键盘插头，倒过来抖一抖，然后用湿布擦拭按键。"
BUILTINS = ("concise", "helpful", "harmless", "positive")


@pytest.fixture(scope="module")
def concise() -> RewardFunction:
    return get_reward("concise")


@pytest.fixture(scope="module")
def helpful() -> RewardFunction:
    return get_reward("helpful")


@pytest.fixture(scope="module")
def harmless() -> RewardFunction:
    return get_reward("harmless")


@pytest.fixture(scope="module")
def positive() -> RewardFunction:
    return get_reward("positive")


@pytest.fixture(scope="module")
def rewards(
    concise: RewardFunction,
    helpful: RewardFunction,
    harmless: RewardFunction,
    positive: RewardFunction,
) -> dict[str, RewardFunction]:
    return {"concise": concise, "helpful": helpful, "harmless": harmless, "positive": positive}


@pytest.fixture
def scratch_names() -> Iterator[list[str]]:
    """Names registered by a test; removed afterwards so tests stay independent."""
    names: list[str] = []
    yield names
    for name in names:
        if name in available_rewards():
            unregister_reward(name)


def score(reward: RewardFunction, prompt: str, responses: Sequence[str]) -> list[float]:
    return reward([prompt] * len(responses), list(responses)).tolist()


# --- every built-in reward --------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_batch_shape_dtype_range_and_edge_texts(rewards: dict[str, RewardFunction], name: str) -> None:
    reward = rewards[name]
    responses = [KEYBOARD_ANSWER, "", "   \n\t", LONG_TEXT, GERMAN, CHINESE, "ok"]
    scores = reward([KEYBOARD] * len(responses), responses)
    assert scores.dtype == torch.float32
    assert scores.shape == (len(responses),)
    assert torch.isfinite(scores).all()
    low, high = reward.value_range
    assert ((scores >= low - 1e-6) & (scores <= high + 1e-6)).all(), scores
    assert reward.name == name and reward.description
    assert isinstance(reward, RewardFunction)


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_is_deterministic_and_batch_independent(rewards: dict[str, RewardFunction], name: str) -> None:
    reward = rewards[name]
    prompts = [KEYBOARD, "What is the capital of France?", KEYBOARD]
    responses = [KEYBOARD_ANSWER, "Paris.", "You idiot, just buy a new one!"]
    batched = reward(prompts, responses)
    one_by_one = torch.cat([reward([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, reward(prompts, responses))


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_empty_batch_and_bad_batches(rewards: dict[str, RewardFunction], name: str) -> None:
    reward = rewards[name]
    empty = reward([], [])
    assert empty.shape == (0,) and empty.dtype == torch.float32
    with pytest.raises(RewardError, match="2 prompts but 1 responses"):
        reward(["a", "b"], ["x"])
    with pytest.raises(RewardError, match="single str"):
        reward("a", "x")
    with pytest.raises(RewardError, match="expected str"):
        reward(["a"], [None])  # type: ignore[list-item]


# --- concise ----------------------------------------------------------------------------


def test_concise_short_relevant_beats_long_rambling(concise: RewardFunction) -> None:
    rambling = (
        "Keeping a keyboard clean is important for hygiene and for the longevity of the device. " * 6 + KEYBOARD_ANSWER
    )
    short, long = score(concise, KEYBOARD, [KEYBOARD_ANSWER, rambling])
    assert short > long > 0.0


def test_concise_non_answers_never_beat_a_short_complete_answer(concise: RewardFunction) -> None:
    non_answers = [
        "",
        "   ",
        "Here's how to clean your laptop keyboard:",
        "Here's how:",
        "Sure! Here are some simple steps to clean your keyboard.",
        "1. Unplug the laptop.\n2.",
        "To clean it you need",
        "How do I clean my laptop keyboard?",
    ]
    answer, *others = score(concise, KEYBOARD, [KEYBOARD_ANSWER, *non_answers])
    assert answer > 0.3
    for text, value in zip(non_answers, others, strict=True):
        assert value < answer, text
        assert value == 0.0, text


def test_concise_irrelevant_and_refusal_lose(concise: RewardFunction) -> None:
    answer, unrelated, refusal = score(
        concise,
        KEYBOARD,
        [
            KEYBOARD_ANSWER,
            "The stock market fell sharply today after weak earnings reports.",
            "I can't help with that.",
        ],
    )
    assert answer > 2 * unrelated
    assert answer > 2 * refusal


def test_concise_prefers_the_shorter_of_two_correct_answers(concise: RewardFunction) -> None:
    terse, full, verbose = score(
        concise,
        "What is the capital of France?",
        [
            "Paris.",
            "The capital of France is Paris.",
            "France's capital is Paris, its largest city, on the Seine, home to the Louvre, "
            "the Eiffel Tower and roughly two million people.",
        ],
    )
    assert terse > full > verbose


def test_concise_counts_with_a_tokenizer(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    with_tokenizer = get_reward("concise", tokenizer=tokenizer)
    assert with_tokenizer is get_reward("concise", tokenizer=tokenizer)  # cached per options
    assert count_tokens(["hello world"], tokenizer) == [
        len(tokenizer("hello world", add_special_tokens=False)["input_ids"])
    ]
    short, long = score(with_tokenizer, KEYBOARD, [KEYBOARD_ANSWER, KEYBOARD_ANSWER * 5])
    assert short > long


def test_concise_rejects_bad_options() -> None:
    with pytest.raises(ConfigError, match="half_tokens"):
        get_reward("concise", half_tokens=0)


def test_token_count_fallback_handles_cjk() -> None:
    assert count_tokens(["Hello, world!"]) == [4]
    assert count_tokens([CHINESE])[0] >= 20  # one per character, not one per run


@pytest.mark.parametrize(
    ("text", "dangling"),
    [
        ("Here's how to clean your keyboard:", True),
        ("Here are some tips for sleeping better.", True),
        ("Steps:\n1. Unplug it.\n2.", True),
        ("You will need a cloth, alcohol and", True),
        ("## Steps", True),
        ("Paris.", False),
        ("4", False),
        ("Here is the answer: Paris.", False),
        ("Use C++", False),
        ("1. Unplug it.\n2. Wipe it.", False),
    ],
)
def test_is_dangling(text: str, dangling: bool) -> None:
    assert is_dangling(text) is dangling


# --- helpful ----------------------------------------------------------------------------


def test_helpful_relevant_beats_unrelated(helpful: RewardFunction) -> None:
    relevant, unrelated = score(
        helpful,
        KEYBOARD,
        [KEYBOARD_ANSWER, "Bananas are rich in potassium and make a good snack."],
    )
    assert relevant > unrelated + 0.3


def test_helpful_penalises_refusals_empty_dangling_and_echo(helpful: RewardFunction) -> None:
    answer, refusal, as_ai, empty, dangling, echo = score(
        helpful,
        KEYBOARD,
        [
            KEYBOARD_ANSWER,
            "I'm sorry, but I can't help with that.",
            "As an AI language model, I do not have a keyboard. " + KEYBOARD_ANSWER,
            "",
            "Here's how to clean your laptop keyboard:",
            KEYBOARD,
        ],
    )
    assert empty == -1.0
    assert answer > as_ai > refusal > empty
    assert answer > dangling + 0.3
    assert answer > echo


def test_helpful_prefix_score_leaves_unfinished_answers_unpenalised(helpful: RewardFunction) -> None:
    """Shaping's potential: a half-written answer is not charged as dangling; a refusal still is."""
    prefixes = ["Here's how to clean your laptop keyboard:", "I'm sorry, but I can't help with that.", "  "]
    finished = score(helpful, KEYBOARD, prefixes)
    cosine = load_embedder().similarity([KEYBOARD] * 3, prefixes).tolist()
    potential = helpful.prefix_score([KEYBOARD] * 3, prefixes).tolist()  # type: ignore[attr-defined]
    assert potential[0] == pytest.approx(cosine[0], abs=1e-6) and potential[0] > finished[0] + 0.4
    assert potential[1] == pytest.approx(cosine[1] - 0.5, abs=1e-6)
    assert potential[2] == 0.0 and finished[2] == -1.0


def test_is_refusal() -> None:
    assert is_refusal("I can't help with that.")
    assert is_refusal("I’m sorry, but I cannot assist with this request.")
    assert is_refusal("As an AI, I don't have opinions.")
    assert not is_refusal("You can't go wrong with a damp cloth.")
    assert not is_refusal(KEYBOARD_ANSWER)


# --- harmless ---------------------------------------------------------------------------


def test_harmless_profanity_and_abuse_lower_the_score(harmless: RewardFunction) -> None:
    clean, swearing, leet, abuse, instructions = score(
        harmless,
        "Say something.",
        [
            "Have a lovely day, and remember to drink some water.",
            "What the fuck is this bullshit?",
            "This is sh1t.",
            "Shut up, you're an idiot.",
            "To make a pipe bomb, take a steel pipe and fill it with powder.",
        ],
    )
    assert 0.3 < clean <= 1.0
    assert 0.0 <= swearing < 0.01  # two profane words halve it twice, and the classifier is sure
    assert 0.0 <= leet < clean
    assert abuse < clean and instructions < clean
    lists_only = get_reward("harmless", decades=0)
    clean, swearing = score(lists_only, "Say something.", ["Have a lovely day.", "What the fuck is this bullshit?"])
    assert clean == 1.0 and swearing == pytest.approx(0.25)


def test_harmless_classifier_grades_ordinary_text(harmless: RewardFunction) -> None:
    """Between clean and abusive there are degrees, which the word lists alone do not see."""
    kind, snide, hostile = score(
        harmless,
        "What do you think of my essay?",
        [
            "Thank you for sharing it; the second paragraph reads really well.",
            "Honestly it is dull and a bit pathetic, but whatever.",
            "This is garbage written by a brainless loser.",
        ],
    )
    assert 1.0 >= kind > snide > hostile >= 0.0
    assert offensive_probability(["", "   "]) == [0.0, 0.0]


def test_harmless_does_not_flag_refusals_safety_advice_or_neutral_words(
    harmless: RewardFunction,
) -> None:
    texts = [
        "I can't help you make a bomb, but I can explain how bomb squads keep people safe.",
        "Never mix bleach and ammonia: it releases toxic gas.",
        "You're not stupid at all; everyone gets stuck sometimes.",
        "Run `kill -9 <pid>` to end the process, and len(x) gives the length.",
        "Breast cancer screening is recommended for women over 40.",
        "Please assess the class materials before Monday.",
        "",
        LONG_TEXT,
    ]
    lists_only = get_reward("harmless", decades=0)
    assert score(lists_only, "Help me.", texts) == [1.0] * len(texts)
    # the classifier judges words: "not stupid" costs most, "kill -9" and "breast" some
    graded = dict(zip(texts, score(harmless, "Help me.", texts), strict=True))
    assert all(0.0 < g <= 1.0 for g in graded.values()) and graded[""] == 1.0
    assert graded[texts[2]] < 0.05 < graded[texts[3]] < graded[texts[0]]
    assert graded[texts[4]] < graded[texts[1]]


def test_harmless_counters() -> None:
    assert count_profanity("son of a bitch") == 1  # a listed phrase counts once
    assert count_profanity("f.u.c.k off") >= 1
    assert count_profanity("Das ist gut.") == 0
    assert count_harm_cues("Step one: hotwire the car.") == 1
    assert count_harm_cues("Don't try to hotwire a car, it is illegal.") == 0


# --- positive ---------------------------------------------------------------------------


def test_positive_orders_sentiment(positive: RewardFunction) -> None:
    happy, neutral, sad = score(
        positive,
        "How was it?",
        ["I love this, wonderful!", "It is a table.", "This is terrible and I hate it"],
    )
    assert happy > 0.5 > neutral > -0.5 > sad
    assert neutral == 0.0
    assert score(positive, "x", [""]) == [0.0]


# --- registry ---------------------------------------------------------------------------


def test_available_rewards_lists_builtins() -> None:
    names = available_rewards()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)


def test_unknown_reward_lists_valid_names() -> None:
    with pytest.raises(RewardError, match=r"unknown reward 'consise'.*concise.*helpful.*hf:"):
        get_reward("consise")
    with pytest.raises(RewardError, match="options"):
        get_reward("positive", colour="blue")


def test_get_reward_caches_built_rewards(concise: RewardFunction) -> None:
    assert get_reward("concise") is concise
    assert get_reward("concise", half_tokens=64) is not concise


def test_register_plain_callable(scratch_names: list[str]) -> None:
    scratch_names.append("exclaims")

    def exclaims(prompts: Sequence[str], responses: Sequence[str]) -> list[int]:
        """Number of exclamation marks."""
        return [r.count("!") for r in responses]

    register_reward("exclaims", exclaims, value_range=(0.0, float("inf")))
    reward = get_reward("exclaims")
    assert "exclaims" in available_rewards()
    scores = reward(["a", "b"], ["hi!!", "no"])
    assert scores.dtype == torch.float32
    assert scores.tolist() == [2.0, 0.0]
    assert reward.description == "Number of exclamation marks."
    assert reward.value_range == (0.0, float("inf"))
    with pytest.raises(RewardError, match="already registered"):
        register_reward("exclaims", exclaims)
    register_reward("exclaims", lambda p, r: [1.0] * len(r), replace=True)
    assert get_reward("exclaims")(["a"], ["b"]).tolist() == [1.0]


def test_register_factory_and_bad_outputs(scratch_names: list[str]) -> None:
    scratch_names += ["length", "broken", "nan"]

    class Length:
        name = "length"
        description = "characters in the response, times scale"
        value_range = (0.0, float("inf"))

        def __init__(self, scale: float = 1.0) -> None:
            self.scale = scale

        def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
            return torch.tensor([self.scale * len(r) for r in responses])

    register_reward("length", lambda scale=1.0: Length(scale))
    assert get_reward("length", scale=2.0)(["p"], ["abc"]).tolist() == [6.0]

    register_reward("broken", lambda p, r: [[1.0, 2.0]] * len(r))
    with pytest.raises(RewardError, match="shape"):
        get_reward("broken")(["p", "q"], ["a", "b"])
    register_reward("nan", lambda p, r: [float("nan")] * len(r))
    with pytest.raises(RewardError, match="non-finite"):
        get_reward("nan")(["p"], ["a"])
    with pytest.raises(RewardError, match="invalid reward name"):
        register_reward("hf:mine", lambda p, r: [0.0] * len(r))
    with pytest.raises(RewardError, match="needs a callable"):
        register_reward("number", 3)  # type: ignore[arg-type]
    unregister_reward("nan")
    with pytest.raises(RewardError, match="unknown reward 'nan'"):
        get_reward("nan")
    with pytest.raises(RewardError, match="not registered"):
        unregister_reward("nan")


def test_weighted_reward_arithmetic(
    scratch_names: list[str], concise: RewardFunction, positive: RewardFunction
) -> None:
    scratch_names += ["one", "chars"]
    register_reward("one", lambda p, r: [1.0] * len(r), value_range=(1.0, 1.0))
    register_reward("chars", lambda p, r: [len(x) for x in r], value_range=(0.0, 100.0))
    combined = weighted_reward({"one": 2.0, "chars": -0.5})
    scores = combined(["p", "p"], ["abcd", ""])
    assert scores.tolist() == [2.0 - 2.0, 2.0]
    assert combined.value_range == (2.0 - 50.0, 2.0)

    prompts, responses = [KEYBOARD, KEYBOARD], [KEYBOARD_ANSWER, "I hate it."]
    mixed = weighted_reward({"concise": 1.0, "positive": 0.5, "helpful": 0.0})
    expected = concise(prompts, responses) + 0.5 * positive(prompts, responses)
    torch.testing.assert_close(mixed(prompts, responses), expected)
    assert mixed.value_range == (-0.5, 1.5)  # the zero-weight helpful term is left out

    with pytest.raises(RewardError, match="unknown reward"):
        weighted_reward({"nope": 1.0})
    with pytest.raises(ConfigError, match="finite"):
        weighted_reward({"one": float("nan")})
    with pytest.raises(ConfigError, match="at least one"):
        weighted_reward({})


# --- hf:<dir> ---------------------------------------------------------------------------

_TOKENIZER_CORPUS = [
    "How do I clean my laptop keyboard?",
    "Unplug it and wipe the keys with a damp cloth.",
    "What is the capital of France? Paris.",
    "I love this, wonderful! This is terrible and I hate it.",
]


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE tokenizer trained on four sentences (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_reward_model_dir(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama sequence classifier saved as safetensors."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForSequenceClassification(config)
    path = tmp_path_factory.mktemp("tiny_reward_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return path


def test_hf_reward_scores_pairs(tiny_reward_model_dir: Path) -> None:
    reward = get_reward(f"hf:{tiny_reward_model_dir}", device="cpu", batch_size=2)
    assert reward is get_reward(f"hf:{tiny_reward_model_dir}", device="cpu", batch_size=2)
    prompts = [KEYBOARD, "What is the capital of France?", KEYBOARD]
    responses = [KEYBOARD_ANSWER, "Paris.", "I love this, wonderful!"]
    scores = reward(prompts, responses)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.isfinite(scores).all()
    assert reward.name.startswith("hf:") and reward.value_range == (-float("inf"), float("inf"))
    # padding in a batch must not change a pair's score
    one_by_one = torch.cat([reward([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    torch.testing.assert_close(scores, one_by_one, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, reward(prompts, responses))
    assert scores[0] != scores[2]  # the response matters
    edge = reward([KEYBOARD, KEYBOARD, "x", ""], ["", LONG_TEXT, CHINESE, ""])
    assert edge.shape == (4,) and torch.isfinite(edge).all()
    assert torch.isfinite(reward([""], [""])).all()


def test_hf_reward_with_chat_template(tiny_reward_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path / "chat_model"
    shutil.copytree(tiny_reward_model_dir, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    tokenizer.save_pretrained(path)
    reward = get_reward(f"hf:{path}", device="cpu")
    scores = reward([KEYBOARD, KEYBOARD], [KEYBOARD_ANSWER, ""])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_hf_reward_refuses_pickle_weights(tiny_reward_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "pickled"
    shutil.copytree(tiny_reward_model_dir, path)
    (path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(RewardError, match=r"pytorch_model\.bin.*safetensors"):
        get_reward(f"hf:{path}")


def test_hf_reward_needs_a_safetensors_directory(tmp_path: Path) -> None:
    with pytest.raises(RewardError, match="not a directory"):
        get_reward(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(RewardError, match=r"no \*\.safetensors"):
        get_reward(f"hf:{tmp_path}")
    with pytest.raises(RewardError, match="needs a directory"):
        get_reward("hf:")


# --- prompt set -------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_prompt_files() -> None:
    train, evaluation = load_prompts("train"), load_prompts("eval")
    assert len(train) + len(evaluation) >= 300
    assert len(train) == 240 and len(evaluation) == 240
    everything = train + evaluation
    assert all(isinstance(p, Prompt) for p in everything)
    ids = [p.id for p in everything]
    assert len(set(ids)) == len(ids)
    assert {p.id for p in train}.isdisjoint(p.id for p in evaluation)
    texts = [" ".join(p.prompt.lower().split()) for p in everything]
    assert len(set(texts)) == len(texts)
    assert {p.category for p in everything} == set(CATEGORIES)
    assert all(p.id.startswith(p.category + "-") for p in everything)
    assert all(0 < len(p.prompt.split()) < 40 for p in everything)
    for split in (train, evaluation):
        share = sum(p.category == "adversarial" for p in split) / len(split)
        assert 0.10 <= share <= 0.15
    assert load_prompts("train") == train  # deterministic
    # the split rule of the module docstring: ids 001-040 split by digest, 041-060 all eval, listed last
    number = {p.id: int(p.id.rsplit("-", 1)[1]) for p in everything}
    for category in CATEGORIES:
        first = sorted((p.id for p in everything if p.category == category and number[p.id] <= 40), key=_digest)
        assert len(first) == 40
        assert {p.id for p in evaluation if p.category == category and number[p.id] <= 40} == set(first[:10])
        assert sorted(number[p.id] for p in evaluation if p.category == category and number[p.id] > 40) == list(
            range(41, 61)
        )
    assert [number[p.id] <= 40 for p in evaluation] == [True] * 80 + [False] * 160
    with pytest.raises(ConfigError, match="train, eval"):
        load_prompts("test")  # type: ignore[arg-type]
