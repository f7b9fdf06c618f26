"""Pure scheduling logic: functions of plain snapshots, no I/O.

Nothing here imports from the rest of wattpool except plain types, so the live
router, the placement reconciler and the simulator run the very same code.
"""
