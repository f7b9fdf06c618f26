"""Pure scheduling logic: functions of plain snapshots, no I/O.

Nothing here imports from the rest of wattpool except plain types, so the live
router, the placement reconciler and the simulator run the very same code.

- ``candidates``: ``Candidate``, ``RequestSpec`` and ``CandidateTable`` (columns);
- ``filters``, ``scorers``: the plugins; ``scoring.ScoringPolicy``: wattpool's default;
- ``baselines``: round-robin, least-loaded, power-of-two, prefix-threshold, and
  ``make_policy(name)`` for all five;
- ``decision``: ``Decision``, ``explain`` (dict) and ``explain_text`` (str);
- ``prefix``: chained block hashes and the bounded ``PrefixIndex``;
- ``tables``: ``TableBook``, candidate tables kept current from heartbeats;
- ``placement``: ``plan_placement`` over nodes (the live reconciler today);
  ``geo_placement``: ``plan_sites`` over sites and regions;
- ``ratelimit``: token buckets and admission.
"""
