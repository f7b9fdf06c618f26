"""The operator web UI, a separate ASGI app off the hot path (planned)."""
