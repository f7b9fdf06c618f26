"""The OpenAI-compatible HTTP gateway: the hot path."""
