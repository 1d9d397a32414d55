"""A simulator that answers from a table of values computed before: to compare thinkers,
selectors and scorers on a search space already simulated, quickly and reproducibly.

The table is JSON lines, one molecule each::

    {"smiles": "CCO", "key": "...", "properties": {"ip-vertical-gfn2": 10.8, ...},
     "seconds": {"ip-vertical-gfn2": 0.21, "ip-adiabatic-gfn2": 0.30}, "failures": {}}

``seconds`` are what each recipe cost, in the order they were computed, each on top of the
ones before it (the adiabatic ionization potential after the vertical one only relaxes the
cation). A replayed simulation costs the seconds of the recipes it asks for and of the
earlier ones they build on that the record does not hold yet; with ``spin`` the worker
keeps its core busy that long (``scale`` times it), so models compete for the CPU as with
real simulations, and ``tasks.jsonl`` times and utilization mean what they do in a real run.

Use it as a spec's simulator: ``Spec(..., simulator=Replay("truth.jsonl"))``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from steersman.apps.moldesign.store import MoleculeRecord


class Replay:
    """Simulate by looking values up in ``table``; see the module's description."""

    def __init__(self, table: str | Path, spin: bool = True, scale: float = 1.0) -> None:
        self.table = Path(table)
        if not self.table.is_file():
            raise FileNotFoundError(f"no replay table at {self.table}")
        self.spin = spin
        self.scale = scale
        self._rows: dict[str, dict] | None = None

    def rows(self) -> dict[str, dict]:
        if self._rows is None:
            with self.table.open() as handle:
                self._rows = {row["smiles"]: row for row in map(json.loads, handle)}
        return self._rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_rows": None}  # each worker reads the table once

    def cost(self, row: dict, names: list[str], record: MoleculeRecord) -> float:
        order = list(row.get("seconds", {}))
        wanted = [order.index(n) for n in names if n in order]
        if not wanted:
            return 0.0
        return sum(
            row["seconds"][name] for name in order[: max(wanted) + 1] if not record.done(name)
        )

    def __call__(self, smiles: str, key: str, recipes: list, record=None) -> MoleculeRecord:
        record = record or MoleculeRecord(key=key, smiles=smiles)
        row = self.rows().get(smiles)
        names = [r.name for r in recipes if not record.done(r.name)]
        if row is None:
            for name in names:
                record.failures[name] = f"{smiles} is not in the replay table {self.table.name}"
            return record
        seconds = self.cost(row, names, record) * self.scale
        if self.spin:
            until = time.process_time() + seconds
            while time.process_time() < until:
                pass
        else:
            time.sleep(seconds)
        for name in names:
            value = row.get("properties", {}).get(name)
            if value is not None:
                record.properties[name] = float(value)
            else:
                reason = row.get("failures", {}).get(name, f"no {name} in the replay table")
                record.failures[name] = reason
        return record
