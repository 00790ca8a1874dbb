"""Value-head training: rollouts from the base model, reward scoring, TD(lambda) regression."""

from personalize.training.returns import lambda_returns
from personalize.training.rollouts import Rollout, RolloutConfig, load_rollouts, sample_rollouts, save_rollouts
from personalize.training.td import TrainConfig, TrainReport, train_head

__all__ = [
    "Rollout",
    "RolloutConfig",
    "TrainConfig",
    "TrainReport",
    "lambda_returns",
    "load_rollouts",
    "sample_rollouts",
    "save_rollouts",
    "train_head",
]
