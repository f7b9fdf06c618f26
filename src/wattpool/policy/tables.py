"""Candidate tables kept up to date, for a live router: one per model.

Building a table costs O(n) Python per decision; a router with 1,000 instances would
spend milliseconds on it. ``TableBook`` keeps one ``CandidateTable`` per model, writes a
heartbeat's values into its row in place, and rebuilds a table only when its set of
instances changes. Pure: the caller feeds it snapshots; nothing here reads a clock or
the network.
"""

from __future__ import annotations

from msgspec.structs import replace

from wattpool.policy.candidates import IN_FLIGHT, Candidate, CandidateTable


class TableBook:
    """model id -> CandidateTable, as seen from one gateway region."""

    def __init__(self, gateway_region: str = "") -> None:
        self.gateway_region = gateway_region
        self._latest: dict[str, dict[str, Candidate]] = {}  # model -> instance -> snapshot
        self._tables: dict[str, CandidateTable] = {}
        self._dirty: set[str] = set()

    def upsert(self, c: Candidate) -> None:
        """The latest snapshot of one instance (from a heartbeat)."""
        known = self._latest.setdefault(c.model_id, {})
        table = self._tables.get(c.model_id)
        if c.instance_id not in known or table is None or c.region not in table.regions:
            self._dirty.add(c.model_id)
        known[c.instance_id] = c
        if c.model_id not in self._dirty and table is not None:
            row = table.row_of[c.instance_id]
            table.set_row(row, c, table.regions.index(c.region))
            table.rtt[0, row] = c.rtt_ms

    def remove(self, model_id: str, instance_id: str) -> None:
        if self._latest.get(model_id, {}).pop(instance_id, None) is not None:
            self._dirty.add(model_id)

    def set_in_flight(self, model_id: str, instance_id: str, value: int) -> None:
        """The router's own count (heartbeats lag; what this process sent does not)."""
        table = self.table(model_id)
        row = table.row_of.get(instance_id)
        if row is not None:
            table.m[IN_FLIGHT, row] = value
            latest = self._latest[model_id]
            latest[instance_id] = replace(latest[instance_id], in_flight=value)

    def table(self, model_id: str) -> CandidateTable:
        if model_id in self._dirty or model_id not in self._tables:
            snapshots = sorted(self._latest.get(model_id, {}).values(),
                               key=lambda c: c.instance_id)  # lowest id first breaks ties
            self._tables[model_id] = CandidateTable.from_candidates(
                snapshots, model_id=model_id, gateway=self.gateway_region)
            self._dirty.discard(model_id)
        return self._tables[model_id]
