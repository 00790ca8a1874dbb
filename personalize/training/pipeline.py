"""The whole training pipeline as one call: ``train(job, base)``.

    job = TrainJob(objective="formal", reward="my_rewards:formality", out=Path("heads/formal"),
                   prompts=read_prompts(Path("prompts.jsonl")), head=ValueHeadConfig(kind="linear", epochs=1))
    result = train(job, load_base_model("embedded", data_dir=data_dir), store=ArtifactStore(data_dir))

Steps: resolve the reward (a registered name, ``hf:<dir>``, an installed entry point or
``module:function``), sample rollouts from the base model (or from the base model steered by
heads already trained) or read them back from the store, score them, shape the rewards and score
the stop option when the head config asks for it (stored too), then fit the head
(:func:`personalize.training.fit.fit_head`) and write it with everything that made it in
``head.json``. Nothing is printed: progress goes to the store's reporter. Under
``accelerate launch`` the training step runs on every process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from personalize.data import PromptInput
from personalize.decoding import Engine, Personalization
from personalize.errors import ConfigError
from personalize.heads import ValueHead, check_objective_name, load_head
from personalize.models import BaseModel
from personalize.rewards import RewardFunction, load_reward
from personalize.store import ArtifactStore
from personalize.training.config import HeadConfig, TrainReport, ValueHeadConfig
from personalize.training.derived import stored_shaping, stored_stop_scores
from personalize.training.fit import fit_head
from personalize.training.implicit import select_best
from personalize.training.rollouts import Rollout, RolloutConfig, sample_rollouts
from personalize.training.scored import HeadTarget, ScoredRollouts
from personalize.training.td import check_init


@dataclass(frozen=True)
class RolloutSpec:
    """How the training responses are sampled: per prompt, how many and how long, and from which policy
    (the base model, or the base model steered by ``steer_weights`` over heads already trained)."""

    samples_per_prompt: int = 2
    max_new_tokens: int = 256
    batch_size: int = 32
    seed: int = 0
    steer_weights: Mapping[str, float] = field(default_factory=dict)
    """Objective -> weight of the heads that steer the rollouts (VAS); zero weights are dropped."""
    steer_beta: float = 1.0
    with_base: bool = False
    """With steering: train on the base model's rollouts as well as the steered ones."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "steer_weights", {k: float(w) for k, w in self.steer_weights.items() if w != 0})
        self.config()
        self.policy()
        if self.with_base and not self.steer_weights:
            raise ConfigError(
                "--with-base-rollouts adds the base model's rollouts to steered ones: give --rollout-weights"
            )

    def config(self) -> RolloutConfig:
        return RolloutConfig(self.samples_per_prompt, self.max_new_tokens, batch_size=self.batch_size, seed=self.seed)

    def policy(self) -> Personalization:
        return Personalization(self.steer_weights, beta=self.steer_beta)


@dataclass(frozen=True)
class TrainJob:
    """Everything that decides a trained head (see the module docstring for an example)."""

    objective: str
    reward: str | RewardFunction
    """A reward spec (``load_reward``: name, ``hf:<dir>``, entry point or ``module:function``) or a reward object."""
    out: Path
    prompts: Sequence[PromptInput]
    head: HeadConfig = field(default_factory=ValueHeadConfig)
    rollouts: RolloutSpec = field(default_factory=RolloutSpec)
    version: str = "1"
    description: str = ""
    init: Path | None = None
    """Warm-start a value head from this trained head (same kind, value rank and LoRA shape)."""
    command: str = ""
    """The command that ran the job, recorded in ``head.json`` when given."""

    def __post_init__(self) -> None:
        check_objective_name(self.objective)
        if not self.prompts:
            raise ConfigError("a training job needs at least one prompt")

    @property
    def reward_name(self) -> str:
        return self.reward if isinstance(self.reward, str) else self.reward.name


@dataclass(frozen=True)
class TrainResult:
    head: ValueHead
    report: TrainReport
    rollouts_file: Path
    base_rollouts_file: Path | None = None


def train(job: TrainJob, base: BaseModel, *, store: ArtifactStore, steering: Sequence[ValueHead] = ()) -> TrainResult:
    """Run ``job`` on ``base``: rollouts (``steering`` holds the heads its rollout policy weighs), scores,
    shaped and stop rewards as configured, then the head, written to ``job.out``."""
    scorer = load_reward(job.reward) if isinstance(job.reward, str) else job.reward
    config = job.head.train_config()
    missing = sorted(set(job.rollouts.steer_weights) - {h.objective for h in steering})
    if missing:
        raise ConfigError(f"--rollout-weights names {missing}, for which no head was found; pass --heads")
    start_from = load_head(job.init, base) if job.init is not None else None
    if start_from is not None:  # checked before any rollout is sampled
        check_init(start_from, config, base.hidden_size)
    engine = Engine(base, list(steering))
    rollouts, files = _rollouts(job, engine, store)
    reporter = store.reporter
    with reporter.status(f"scoring {len(rollouts)} responses with reward {job.reward_name!r}"):
        scores = scorer([r.prompt for r in rollouts], [r.response for r in rollouts]).float().tolist()
    data = _scored(job, base, scorer, rollouts, scores, files, store)
    used = len(select_best(rollouts, scores, config.top_fraction)) if config.kind == "implicit" else len(rollouts)
    meta = _meta(job, engine, files, start_from)
    target = HeadTarget(job.objective, job.out, job.reward_name, job.description, job.version, meta)
    with reporter.task(f"training {job.objective}", total=config.epochs * math.ceil(used / config.batch_size)) as task:

        def step(epoch: int, _: int, loss: float) -> None:
            task.describe(f"training {job.objective} epoch {epoch + 1} loss {loss:.4f}")
            task.advance(1)

        head, report = fit_head(base, data, target, config, init=start_from, on_step=step)
    base_file = files[0] if len(files) > 1 else None
    return TrainResult(head, report, files[-1], base_file)


def _steering_key(job: TrainJob, engine: Engine) -> tuple[dict[str, object] | None, dict[str, object] | None]:
    """The steered policy as ``head.json`` records it, and as the rollouts' key holds it (None: the base model)."""
    if not job.rollouts.steer_weights:
        return None, None
    policy = job.rollouts.policy()
    recorded: dict[str, object] = {
        "weights": dict(policy.weights),
        "beta": policy.beta,
        "heads": {name: meta.version for name, meta in engine.objectives.items()},
    }
    return recorded, {**recorded, "meta": {n: asdict(m) for n, m in engine.objectives.items()}}


def _rollouts(job: TrainJob, engine: Engine, store: ArtifactStore) -> tuple[list[Rollout], list[Path]]:
    """The job's rollouts (base ones first when it wants both) and the files they are stored in."""
    spec, config = job.rollouts, job.rollouts.config()
    _, steering = _steering_key(job, engine)
    prompts = list(job.prompts)

    def stored(policy: Personalization, steering: dict[str, object] | None) -> tuple[list[Rollout], Path]:
        material: list[object] = [engine.base.backbone_id, prompts, config.__dict__]
        if steering is not None:  # the base policy's key is left as it always was
            material.append(steering)
        weights = ",".join(f"{name}={weight:g}" for name, weight in policy.weights.items())
        label = "rollouts" + (f" steered by {weights}" if steering is not None else "")

        def sample(advance: Any) -> list[Rollout]:
            return sample_rollouts(engine, prompts, config, policy=policy, on_batch=advance)

        return store.rollouts(material, label, len(prompts) * config.samples_per_prompt, sample)

    rollouts, path = stored(spec.policy(), steering)
    if not spec.with_base:
        return rollouts, [path]
    base_rollouts, base_path = stored(Personalization({}), None)
    return base_rollouts + rollouts, [base_path, path]


def _scored(
    job: TrainJob,
    base: BaseModel,
    scorer: RewardFunction,
    rollouts: list[Rollout],
    scores: list[float],
    files: list[Path],
    store: ArtifactStore,
) -> ScoredRollouts:
    """The scored rollouts with the shaped rewards and stop rewards the head config asks for."""
    head = job.head
    shaping = head.shaping if isinstance(head, ValueHeadConfig) else "none"
    action_rewards = None
    if shaping != "none":
        action_rewards = stored_shaping(store, rollouts, scores, scorer, base, shaping, files)
    stop_option = isinstance(head, ValueHeadConfig) and head.stop_option
    stop_rewards = stored_stop_scores(store, rollouts, scorer, base, files) if stop_option else None
    return ScoredRollouts(rollouts, scores, action_rewards, stop_rewards, job.rollouts.max_new_tokens)


def _meta(job: TrainJob, engine: Engine, files: list[Path], start_from: ValueHead | None) -> dict[str, object]:
    """What ``head.json`` records under ``training`` besides the config and the losses."""
    policy, _ = _steering_key(job, engine)
    shaping = job.head.shaping if isinstance(job.head, ValueHeadConfig) else "none"
    meta: dict[str, object] = {"command": job.command} if job.command else {}
    meta["rollouts_file"] = files[-1].name
    if len(files) > 1:
        meta["base_rollouts_file"] = files[0].name
    meta.update({"rollout_config": job.rollouts.config().__dict__, "prompts": len(job.prompts), "shaping": shaping})
    if policy is not None:
        meta["rollout_policy"] = policy
    if start_from is not None:
        meta["init"] = {"path": str(job.init), "version": start_from.meta.version}
    return meta
