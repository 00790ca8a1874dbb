"""The HTTP service: OpenAI-compatible completions with per-user personalization."""
