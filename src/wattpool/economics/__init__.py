"""Payout schemes, prices and the mine-or-infer decision (planned)."""
