"""Audits, first form: canary prompts and node reputation. Pure functions.

A canary is an ordinary-looking request with a greedy (temperature 0, fixed seed)
answer. Every instance of a model gets the same canary; the answer most of them agree
on is the reference, and an instance that disagrees fails the audit.

Tolerance for honest non-determinism: greedy decoding on the same weights gives the same
tokens until floating-point differences between machines (thread counts, batch shapes,
GPU kernels) flip a near-tie, after which the texts drift apart. So answers are compared
on their first ``AGREEMENT_WORDS`` words only, and must agree on at least
``AGREEMENT_MIN`` of them. A different model (or a truncated, cheaper one) disagrees from
the first words on, far below that bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

AGREEMENT_WORDS = 16
AGREEMENT_MIN = 0.75
TRUSTED = 0.8  # reputation at or above: full traffic
QUARANTINE = 0.3  # below: no traffic at all
PASS_GAIN = 0.05
FAIL_FACTOR = 0.5


def agreement(a: str, b: str, words: int = AGREEMENT_WORDS) -> float:
    """Share of the first ``words`` words that two answers have in the same place."""
    wa, wb = a.split()[:words], b.split()[:words]
    n = max(len(wa), len(wb))
    if n == 0:
        return 1.0
    return sum(1 for x, y in zip(wa, wb, strict=False) if x == y) / n


def reference_answer(answers: Mapping[str, str]) -> str | None:
    """The answer a strict majority of instances agree with, or None (no verdict).

    Needs at least two instances: a lone instance cannot be checked against anything.
    """
    if len(answers) < 2:
        return None
    best, support = None, 0
    for candidate in answers.values():
        agree = sum(1 for other in answers.values()
                    if agreement(candidate, other) >= AGREEMENT_MIN)
        if agree > support:
            best, support = candidate, agree
    return best if support * 2 > len(answers) else None


def judge(answers: Mapping[str, str]) -> dict[str, bool]:
    """instance -> passed, for every instance that answered (empty: no verdict)."""
    ref = reference_answer(answers)
    if ref is None:
        return {}
    return {who: agreement(ans, ref) >= AGREEMENT_MIN for who, ans in answers.items()}


@dataclass(frozen=True, slots=True)
class Reputation:
    score: float = 1.0
    passes: int = 0
    fails: int = 0

    @property
    def quarantined(self) -> bool:
        return self.score < QUARANTINE

    @property
    def traffic_weight(self) -> float:
        """1 when trusted, the score itself when reduced, 0 when quarantined."""
        if self.quarantined:
            return 0.0
        return 1.0 if self.score >= TRUSTED else self.score


def update(rep: Reputation, passed: bool) -> Reputation:
    """Trust is slow to earn and quick to lose: +0.05 per pass, halved per failure."""
    if passed:
        return Reputation(min(1.0, rep.score + PASS_GAIN), rep.passes + 1, rep.fails)
    return Reputation(rep.score * FAIL_FACTOR, rep.passes, rep.fails + 1)
