"""A RemoteEngine from the settings (``PERSONALIZE_REMOTE_*``, or the commands' ``--remote-*`` options)."""

from __future__ import annotations

from personalize.decoding import Engine
from personalize.errors import ConfigError
from personalize.remote.engine import RemoteEngine
from personalize.remote.upstream import OpenAIUpstream
from personalize.settings import Settings


def remote_engine(config: Settings, local: Engine) -> RemoteEngine:
    """The engine steering ``config.remote_url``'s model with ``local``'s heads (checked at once)."""
    if not config.remote_url or not config.remote_model:
        raise ConfigError(
            "a remote base model needs both a URL and a model name (--remote-url and --remote-model, or "
            f"PERSONALIZE_REMOTE_URL and PERSONALIZE_REMOTE_MODEL); got url={config.remote_url!r}, "
            f"model={config.remote_model!r}"
        )
    upstream = OpenAIUpstream(
        config.remote_url,
        config.remote_model,
        api_key=config.remote_api_key,
        timeout_s=config.remote_timeout_s,
    )
    return RemoteEngine(local, upstream, tokenizer_hash=config.remote_tokenizer_hash)
