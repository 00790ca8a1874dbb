"""The UI's settings, read once from the environment (nothing else in ``ui`` reads it).
The variables:

    PERSONALIZE_API_URL      the service (default http://127.0.0.1:8000)
    PERSONALIZE_UI_API_KEY   an API key to pre-fill on the sign-in form (``personalize demo`` sets it)
    PERSONALIZE_EVAL_PLOT    the evaluation's Pareto plot (default docs/eval.png in the checkout)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_API_URL = "http://127.0.0.1:8000"
DEFAULT_EVAL_PLOT = Path(__file__).resolve().parents[1] / "docs" / "eval.png"


@dataclass(frozen=True)
class UIConfig:
    api_url: str = DEFAULT_API_URL
    prefill_api_key: str = ""
    eval_plot: Path = DEFAULT_EVAL_PLOT

    def __post_init__(self) -> None:
        if not self.api_url.startswith(("http://", "https://")):
            raise ValueError(f"PERSONALIZE_API_URL must start with http:// or https://, got {self.api_url!r}")
        object.__setattr__(self, "api_url", self.api_url.rstrip("/"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UIConfig:
        env = os.environ if environ is None else environ
        return cls(
            api_url=env.get("PERSONALIZE_API_URL") or DEFAULT_API_URL,
            prefill_api_key=env.get("PERSONALIZE_UI_API_KEY", ""),
            eval_plot=Path(env.get("PERSONALIZE_EVAL_PLOT") or DEFAULT_EVAL_PLOT),
        )
