"""Molecule records and the database that keeps them: one JSON object per line.

A record keeps every geometry and every energy, labelled by level of theory, charge and
solvent, so a later recipe reuses earlier work (an adiabatic ionization potential reuses
the relaxed neutral that a vertical one computed). The database is append-only: each update
writes the whole record as a new line and the last line of a molecule wins, so a run stopped
at any moment — Ctrl-C, a killed process — leaves a file that loads; a line cut short by a
crash is skipped with a warning.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import msgspec

logger = logging.getLogger(__name__)


class Geometry(msgspec.Struct):
    """A structure, relaxed at ``level`` (``"mmff"`` for the force-field start) for
    ``charge`` in ``solvent`` (None: gas phase)."""

    xyz: str
    level: str
    charge: int = 0
    solvent: str | None = None


class Energy(msgspec.Struct):
    """The energy (eV) of ``geometries[geometry]`` at ``level``, ``charge``, ``solvent``."""

    geometry: int
    level: str
    charge: int
    solvent: str | None
    value: float


class MoleculeRecord(msgspec.Struct):
    """Everything known about one molecule; ``key`` is its InChIKey."""

    key: str
    smiles: str
    geometries: list[Geometry] = msgspec.field(default_factory=list)
    energies: list[Energy] = msgspec.field(default_factory=list)
    properties: dict[str, float] = msgspec.field(default_factory=dict)
    """Recipe name -> value."""
    failures: dict[str, str] = msgspec.field(default_factory=dict)
    """Recipe name -> why it could not be computed."""

    def geometry(self, level: str, charge: int, solvent: str | None) -> int | None:
        """Index of a geometry relaxed at exactly this level, charge and solvent."""
        for index, geometry in enumerate(self.geometries):
            if (geometry.level, geometry.charge, geometry.solvent) == (level, charge, solvent):
                return index
        return None

    def energy(self, geometry: int, level: str, charge: int, solvent: str | None) -> float | None:
        for energy in self.energies:
            if (energy.geometry, energy.level, energy.charge, energy.solvent) == (
                geometry,
                level,
                charge,
                solvent,
            ):
                return energy.value
        return None

    def done(self, recipe: str) -> bool:
        """Whether ``recipe`` was computed or failed for good."""
        return recipe in self.properties or recipe in self.failures


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(MoleculeRecord)


class MoleculeStore:
    """The run's molecule database, in memory and in a JSON-lines file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, MoleculeRecord] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()
        self._handle = self.path.open("ab")

    def _load(self) -> None:
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = _decoder.decode(line)
                except msgspec.DecodeError:
                    logger.warning("%s line %d is cut short or damaged: skipped", self.path, number)
                    continue
                self._records[record.key] = record

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> MoleculeRecord | None:
        return self._records.get(key)

    def __iter__(self) -> Iterator[MoleculeRecord]:
        return iter(list(self._records.values()))

    def update(self, record: MoleculeRecord) -> None:
        """Keep ``record`` and append it to the file, flushed to disk before returning."""
        line = _encoder.encode(record) + b"\n"
        with self._lock:
            self._records[record.key] = record
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> MoleculeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
