"""Bodies of the feedback and duel endpoints (app/routes/feedback.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import MAX_SCORED_CHARS, PersonalizationIn, ProfileOut, ScoredText

FeedbackText = Annotated[str, Field(min_length=1, max_length=MAX_SCORED_CHARS)]


class FeedbackIn(BaseModel):
    """One choice: ``chosen`` was the better answer to ``prompt`` than ``rejected``."""

    model_config = ConfigDict(extra="forbid")

    prompt: FeedbackText = Field(description=f"The prompt both answers answer (at most {MAX_SCORED_CHARS} characters).")
    chosen: FeedbackText = Field(description="The answer the user preferred.")
    rejected: FeedbackText = Field(description="The other answer (must differ from `chosen`).")
    chosen_personalization: PersonalizationIn | None = Field(
        default=None, description="What `chosen` was generated with (stored for analysis; optional)."
    )
    rejected_personalization: PersonalizationIn | None = Field(
        default=None, description="What `rejected` was generated with (stored for analysis; optional)."
    )


class FeedbackOut(BaseModel):
    """One stored comparison."""

    id: int
    created_at: str
    prompt: str = Field(description="Blank once the retention period has passed (see `texts_removed`).")
    chosen: str
    rejected: str
    texts_removed: bool = Field(description="Whether the retention period has blanked the three texts.")
    scores: dict[str, list[float]] = Field(description="Objective -> [reward of chosen, reward of rejected].")
    rewards: dict[str, str] = Field(description="Objective -> the reward function that scored it.")
    head_versions: dict[str, str]
    chosen_personalization: dict[str, Any] | None
    rejected_personalization: dict[str, Any] | None


class FitOut(BaseModel):
    """The user's utility as fitted from all their comparisons, and the weights that realise it."""

    comparisons: int = Field(description="How many comparisons the fit used.")
    objectives: list[str] = Field(description="The objectives fitted: those with an active head now.")
    ignored: list[str] = Field(
        description="Objectives some comparisons were scored on that have no active head now: left out of the fit "
        "(their profile weights are left as they were)."
    )
    utility: dict[str, float] = Field(
        description="Utility per unit of each objective's reward, scaled to unit length (reward units)."
    )
    stderr: dict[str, float] = Field(
        description="Standard error of each `utility` entry (Laplace approximation at the fit)."
    )
    weights: dict[str, float] = Field(
        description="Decoder weights realising `utility` (w_k ∝ u_k × the head's calibration scale), with the "
        "profile's strength (the length of its weights; 1 when it had none), clipped to the valid range."
    )


class FeedbackResult(BaseModel):
    object: Literal["feedback"] = "feedback"
    feedback: FeedbackOut
    fit: FitOut
    profile: ProfileOut = Field(description="The profile after the fit (a new version, `source: feedback`).")


class FeedbackList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FeedbackOut] = Field(description="Newest first.")
    total: int = Field(description="How many comparisons the user has in all.")
    has_more: bool


class FeedbackDeleted(BaseModel):
    object: Literal["feedback.deleted"] = "feedback.deleted"
    deleted: int
    profile: ProfileOut = Field(
        description="The profile after the deletion: refitted from the comparisons left, or back to its last "
        "manual weights when none is left (a manually set profile is left as it is)."
    )
    fit: FitOut | None = None


class DuelIn(BaseModel):
    """Ask for two answers to compare."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[ScoredText, Field(min_length=1)] = Field(description="A user message to answer twice.")
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Per answer; omitted: default.")
    temperature: Annotated[float, Field(ge=0, le=5)] = 1.0
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = Field(
        default=None, description="Makes the pair of weight vectors and both answers reproducible."
    )


class DuelAnswer(BaseModel):
    text: str
    finish_reason: str | None
    personalization: dict[str, Any] = Field(
        description="What the answer was generated with: send it back as `chosen_personalization` / "
        "`rejected_personalization` with the feedback."
    )
    head_versions: dict[str, str] = Field(description="Objective -> the head version that steered the answer.")


class DuelOut(BaseModel):
    object: Literal["duel"] = "duel"
    prompt: str
    answers: list[DuelAnswer] = Field(
        description="Two answers: of the `candidates` generated, the pair whose choice is expected to teach "
        "the fit the most."
    )
    direction: dict[str, float] = Field(
        description="The unit direction (decoder units) from the second answer's weights to the first's "
        "(zeros when both were generated with the same weights)."
    )
    variance: float = Field(
        description="Posterior variance of the user's utility difference between the two answers (normalised units)."
    )
    gain: float = Field(
        description="How much the choice is expected to shrink the squared angular error of the fit's utility "
        "direction (reward units, radians², to first order; only the direction steers)."
    )
    candidates: int = Field(description="How many answers were generated to choose the pair from.")
    kept: int = Field(
        description="How many answers of the user's earlier duels on this prompt the pair was also chosen from "
        "(a pair shown before is not shown again while any other pair is left)."
    )
    comparisons: int
