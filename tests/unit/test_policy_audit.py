from wattpool.policy.audit import (
    QUARANTINE,
    Reputation,
    agreement,
    judge,
    reference_answer,
    update,
)

HONEST = "one two three four five six seven eight nine ten eleven twelve"


def test_agreement_counts_words_in_place() -> None:
    assert agreement(HONEST, HONEST) == 1.0
    drift = HONEST.rsplit(" ", 2)[0] + " X Y"  # late drift: honest non-determinism
    assert agreement(HONEST, drift) >= 0.75
    assert agreement(HONEST, "uno dos tres cuatro cinco seis siete ocho") < 0.1
    assert agreement("", "") == 1.0


def test_majority_reference_and_verdicts() -> None:
    answers = {"a": HONEST, "b": HONEST, "c": "completely other words from another model"}
    assert reference_answer(answers) == HONEST
    assert judge(answers) == {"a": True, "b": True, "c": False}
    # Two that disagree: no majority, no verdict (nobody is punished on a coin toss).
    assert judge({"a": HONEST, "c": "other words entirely here"}) == {}
    assert judge({"a": HONEST}) == {}


def test_reputation_is_lost_fast_and_earned_slowly() -> None:
    rep = Reputation()
    assert rep.traffic_weight == 1.0
    rep = update(rep, False)
    assert 0 < rep.traffic_weight < 1 and not rep.quarantined  # less traffic first
    rep = update(rep, False)
    assert rep.quarantined and rep.traffic_weight == 0.0 and rep.score < QUARANTINE
    for _ in range(3):
        rep = update(rep, True)
    assert rep.passes == 3 and rep.fails == 2
