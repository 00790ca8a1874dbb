"""Exceptions raised by the library.

One root, specific leaves; every message says what was received and what is valid.

    PersonalizeError
    ├── ConfigError            a configuration value is out of range or malformed
    ├── ModelLoadError         a base model cannot be found or loaded
    ├── HeadError              a value head cannot be used
    │   ├── UnsafeArtifactError    a head directory holds a non-safetensors weight file
    │   ├── BackboneMismatchError  the head was trained on another backbone
    │   ├── TokenizerMismatchError the head's tokenizer hash differs from the model's
    │   └── HeadFormatError        head.json or the weights are malformed
    ├── UnknownObjectiveError  a weight names an objective with no loaded head
    ├── UnknownMethodError     a decoding method name is not registered
    ├── RewardError            a reward function cannot be built or failed
    ├── ContextLengthError     a prompt (plus max_new_tokens) exceeds the model's context
    └── UpstreamError          a remote base model cannot be reached or answered wrongly
        ├── UpstreamTimeoutError   it did not answer within the timeout (after retries)
        └── UpstreamContractError  its answer contradicts what it was asked (it sampled outside
                                   its returned top-k, left out log-probabilities, or uses
                                   another tokenizer)
"""

from __future__ import annotations

from collections.abc import Iterable


class PersonalizeError(Exception):
    """Root of every error the library raises on purpose."""


class ConfigError(PersonalizeError, ValueError):
    """A configuration value is out of range or malformed."""


class ModelLoadError(PersonalizeError):
    """A base model cannot be found or loaded."""


class HeadError(PersonalizeError):
    """A value head cannot be loaded or used."""


class UnsafeArtifactError(HeadError):
    """A head directory contains a file format that could execute code (pickle)."""


class BackboneMismatchError(HeadError):
    """A head was trained on a different backbone than the loaded model."""


class TokenizerMismatchError(HeadError):
    """A head's tokenizer hash differs from the loaded model's tokenizer."""


class HeadFormatError(HeadError):
    """head.json or the head's weights are missing or malformed."""


class UnknownObjectiveError(PersonalizeError, KeyError):
    """A weight vector names an objective for which no head is loaded."""

    def __init__(self, name: str, valid: Iterable[str]) -> None:
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown objective {name!r}; valid objectives: {', '.join(self.valid) or '(none loaded)'}")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownMethodError(PersonalizeError, ValueError):
    """A decoding method name is not registered."""


class RewardError(PersonalizeError):
    """A reward function cannot be built or failed while scoring."""


class ContextLengthError(PersonalizeError, ValueError):
    """A prompt plus max_new_tokens exceeds the model's context window."""


class UpstreamError(PersonalizeError):
    """A remote base model cannot be reached or answered wrongly (the message names it)."""


class UpstreamTimeoutError(UpstreamError):
    """A remote base model did not answer within the timeout, retries included."""


class UpstreamContractError(UpstreamError):
    """A remote base model's answer contradicts what it was asked (sampling, log-probabilities, tokenizer)."""
