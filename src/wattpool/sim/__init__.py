"""Discrete-event simulator of many sites over the same policy/ code (planned)."""
