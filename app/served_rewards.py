"""Which rewards the service resolves, and how: never a module that a request or a head names.

A reward name reaches the service from outside in a head's ``head.json`` (``reward``), uploaded by
an admin. The service resolves only

- the rewards registered in its process (the built-ins, and any the operator registered),
- the rewards installed packages publish (entry-point group ``personalize.rewards``),
- ``hf:<dir>`` where ``<dir>`` is an absolute path inside the reward root
  (``PERSONALIZE_REWARD_ROOT``, default ``DATA_DIR/rewards``).

A ``module:function`` name is refused with a message saying how to publish the function instead,
and :func:`personalize.rewards.get_reward`, which the decoder ranks Best-of-N and AISP samples with,
never imports a module either. A head naming a reward the service cannot resolve still registers
(it steers as any head does); scoring with its reward is what is refused.
"""

from __future__ import annotations

from pathlib import Path

from personalize.errors import RewardError
from personalize.rewards import RewardFunction, available_rewards, get_reward
from personalize.rewards.hf import HF_PREFIX
from personalize.rewards.sources import is_import_spec


def check_hf_path(name: str, root: Path) -> None:
    """RewardError unless ``hf:<dir>`` names an absolute directory path inside ``root``."""
    path = Path(name[len(HF_PREFIX) :])
    if not path.is_absolute():
        raise RewardError(
            f"reward {name!r}: this service takes hf: rewards as absolute paths inside its reward root {root}"
        )
    resolved, inside = path.resolve(), root.resolve()
    if resolved != inside and inside not in resolved.parents:
        raise RewardError(f"reward {name!r} lies outside this service's reward root {root}; put the model there")


def check_served_reward(name: str, root: Path) -> None:
    """What the service accepts in a head it registers: a ``hf:`` reward only inside the reward root."""
    if name.startswith(HF_PREFIX):
        check_hf_path(name, root)


def served_reward(name: str, root: Path) -> RewardFunction:
    """The reward ``name`` as this service resolves it (see the module docstring); RewardError otherwise."""
    if name.startswith(HF_PREFIX):
        check_hf_path(name, root)
    elif is_import_spec(name) and name not in available_rewards():
        raise RewardError(
            f"reward {name!r} names a Python function; this service imports no module that a request or a "
            "head names. Publish it from an installed package (entry-point group personalize.rewards) "
            f"and name the head's reward by its entry-point name; available here: {', '.join(available_rewards())}"
        )
    return get_reward(name)
