"""Steering a base model that runs on another serving engine (vLLM, SGLang, ...): DESIGN.md §5.

The upstream engine proposes chunks of tokens sampled from its own distribution q (its top-k at a
pinned temperature, log-probabilities returned); the value heads run here, on a local backbone
with the same tokenizer, and score every position of a chunk in one forward; speculative
sampling accepts each proposed token with probability min(1, p/q), p being the VAS target, and
replaces the first rejected one with a draw from the residual max(0, p - q). The text is then
an exact sample of p.

    upstream.py     the one seam to the remote engine (an OpenAI-compatible HTTP server)
    speculative.py  the acceptance test and the residual draw (pure tensor code)
    batch.py        a running batch of remote requests (the scheduler's RunningBatch)
    engine.py       RemoteEngine: the engine facade the CLI and the service use
"""
