"""Money and power: payouts, the ledger's transactions, statements, mine-or-infer.

Pure modules (no I/O): ``payouts`` (splitting a charge), ``ledger`` (accounts and
balanced transactions), ``statements`` (operator statements, invoices) and
``mine_or_infer`` (the per-interval decision). Edges that read files or draw:
``prices``, ``bitcoin`` and ``plot`` (matplotlib, optional). The store writes the
ledger (``wattpool.store.ledger``); ``docs/payouts.md`` and ``docs/economics.md``
explain both.
"""
