"""Training heads: the pipeline as a library.

    train(job, base, store=...)     the whole pipeline for one :class:`TrainJob` (rollouts, scores,
                                    shaped and stop rewards, the head), see :mod:`.pipeline`
    fit_head / train_head           one head from scored rollouts (:mod:`.fit`)
    ValueHeadConfig, ImplicitHeadConfig, TrainConfig   how a head is trained (:mod:`.config`)

Modules, from the top down (each imports only those below it; ``td`` and ``implicit`` know
nothing of each other, which an import-linter contract checks)::

    pipeline      TrainJob, RolloutSpec, train
    derived       shaped and stop rewards kept in the artifact store
    fit           fit_head / train_head: shared checks, then one trainer
    td | implicit value heads by TD(lambda) | implicit heads by fine-tuning
    adapters      the peft copy of the backbone and its adapter weights
    scored, shaping, stopping, returns, rollouts, config
"""

from personalize.training.config import (
    HeadConfig,
    ImplicitHeadConfig,
    TrainConfig,
    TrainReport,
    ValueHeadConfig,
    head_config,
)
from personalize.training.fit import fit_head, train_head
from personalize.training.pipeline import RolloutSpec, TrainJob, TrainResult, train
from personalize.training.returns import lambda_returns
from personalize.training.rollouts import Rollout, RolloutConfig, load_rollouts, sample_rollouts, save_rollouts
from personalize.training.scored import HeadTarget, ScoredRollouts

__all__ = [
    "HeadConfig",
    "HeadTarget",
    "ImplicitHeadConfig",
    "Rollout",
    "RolloutConfig",
    "RolloutSpec",
    "ScoredRollouts",
    "TrainConfig",
    "TrainJob",
    "TrainReport",
    "TrainResult",
    "ValueHeadConfig",
    "fit_head",
    "head_config",
    "lambda_returns",
    "load_rollouts",
    "sample_rollouts",
    "save_rollouts",
    "train",
    "train_head",
]
