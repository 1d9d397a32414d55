"""Recipes: how a property is computed from xTB energies, each named with its level of theory.

A recipe asks for relaxed geometries and energies through a :class:`Bench`, which finds them
in the molecule's record or computes and records them, so recipes share work: the
adiabatic ionization potential reuses the relaxed neutral of the vertical one. Subclass
:class:`Recipe` (a ``name`` and a ``compute``) to add your own.

Energies are GFN-xTB electronic energies in eV; potentials are referenced to the standard
hydrogen electrode at 4.44 V. Raw xTB ionization potentials run high against experiment
(the method has no IP/EA correction here); they rank molecules, which is what a search
needs.
"""

from __future__ import annotations

from steersman.apps.moldesign import chemistry
from steersman.apps.moldesign.store import Energy, Geometry, MoleculeRecord

SHE_VOLTS = 4.44
"""Absolute potential of the standard hydrogen electrode (V)."""


class Bench:
    """Geometries and energies of one molecule, computed once and kept in its record."""

    def __init__(self, record: MoleculeRecord, seed: int = 42) -> None:
        self.record = record
        self.seed = seed
        self.charge = chemistry.formal_charge(record.smiles)
        """The molecule's own net charge; recipes speak of charges relative to it."""

    def start(self) -> int:
        """The force-field geometry every relaxation starts from (embedding it if needed)."""
        index = self.record.geometry("mmff", self.charge, None)
        if index is None:
            xyz = chemistry.embed(self.record.smiles, seed=self.seed)
            self.record.geometries.append(Geometry(xyz=xyz, level="mmff", charge=self.charge))
            index = len(self.record.geometries) - 1
        return index

    def relaxed(self, level: str, change: int = 0, solvent: str | None = None) -> int:
        """Index of the geometry relaxed at ``level`` with ``change`` electrons removed (the
        charge relative to the molecule's own) in ``solvent``.

        A charged or solvated molecule starts from the relaxed molecule in gas phase, that
        one from the force-field geometry. Records keep absolute charges.
        """
        charge = self.charge + change
        index = self.record.geometry(level, charge, solvent)
        if index is not None:
            return index
        base = self.start() if (change, solvent) == (0, None) else self.relaxed(level)
        xyz, energy = chemistry.relax(self.record.geometries[base].xyz, level, charge, solvent)
        self.record.geometries.append(
            Geometry(xyz=xyz, level=level, charge=charge, solvent=solvent)
        )
        index = len(self.record.geometries) - 1
        self.record.energies.append(Energy(index, level, charge, solvent, energy))
        return index

    def energy(self, geometry: int, level: str, change: int = 0, solvent: str | None = None):
        """Energy (eV) of geometry ``geometry`` at ``level``, relative charge ``change``,
        in ``solvent``."""
        charge = self.charge + change
        known = self.record.energy(geometry, level, charge, solvent)
        if known is not None:
            return known
        xyz = self.record.geometries[geometry].xyz
        value = chemistry.single_point(xyz, level, charge, solvent)
        self.record.energies.append(Energy(geometry, level, charge, solvent, value))
        return value


class Recipe:
    """A property of a molecule computed from energies. ``name`` is its key in records."""

    level: str = "gfn2"

    @property
    def name(self) -> str:
        raise NotImplementedError

    def compute(self, bench: Bench) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class _Redox(Recipe):
    """Energy to change the charge by ``delta``: vertical (at the neutral's geometry) or
    adiabatic (each state relaxed), in gas or in an implicit solvent."""

    delta = 1
    prefix = ""

    def __init__(self, level: str = "gfn2", vertical: bool = False, solvent: str | None = None):
        if level not in chemistry.LEVELS:
            raise ValueError(f"unknown level {level!r}; known: {', '.join(chemistry.LEVELS)}")
        self.level = level
        self.vertical = vertical
        self.solvent = solvent

    @property
    def name(self) -> str:
        kind = "vertical" if self.vertical else "adiabatic"
        where = f"-{self.solvent}" if self.solvent else ""
        return f"{self.prefix}-{kind}-{self.level}{where}"

    def charge_change(self, bench: Bench) -> float:
        """E(charged) - E(neutral), eV."""
        neutral = bench.relaxed(self.level, 0, self.solvent)
        e_neutral = bench.energy(neutral, self.level, 0, self.solvent)
        if self.vertical:
            e_charged = bench.energy(neutral, self.level, self.delta, self.solvent)
        else:
            charged = bench.relaxed(self.level, self.delta, self.solvent)
            e_charged = bench.energy(charged, self.level, self.delta, self.solvent)
        return e_charged - e_neutral


class IonizationPotential(_Redox):
    """Energy to remove an electron (eV): E(cation) - E(neutral)."""

    delta = 1
    prefix = "ip"

    def compute(self, bench: Bench) -> float:
        return self.charge_change(bench)


class ElectronAffinity(_Redox):
    """Energy released by adding an electron (eV): E(neutral) - E(anion)."""

    delta = -1
    prefix = "ea"

    def compute(self, bench: Bench) -> float:
        return -self.charge_change(bench)


class OxidationPotential(IonizationPotential):
    """Oxidation potential (V vs SHE): the ionization energy in solvent minus 4.44 V."""

    prefix = "oxidation-potential"

    def __init__(self, level: str = "gfn2", vertical: bool = False, solvent: str = "water"):
        super().__init__(level, vertical, solvent)

    def compute(self, bench: Bench) -> float:
        return self.charge_change(bench) - SHE_VOLTS


class ReductionPotential(ElectronAffinity):
    """Reduction potential (V vs SHE): the electron affinity in solvent minus 4.44 V."""

    prefix = "reduction-potential"

    def __init__(self, level: str = "gfn2", vertical: bool = False, solvent: str = "water"):
        super().__init__(level, vertical, solvent)

    def compute(self, bench: Bench) -> float:
        return -self.charge_change(bench) - SHE_VOLTS


class SolvationEnergy(Recipe):
    """Energy of moving the neutral from gas into ``solvent`` (eV, negative = favourable),
    at the gas-phase relaxed geometry (ALPB implicit solvent)."""

    def __init__(self, level: str = "gfn2", solvent: str = "water"):
        if level not in chemistry.LEVELS:
            raise ValueError(f"unknown level {level!r}; known: {', '.join(chemistry.LEVELS)}")
        self.level = level
        self.solvent = solvent

    @property
    def name(self) -> str:
        return f"solvation-energy-{self.level}-{self.solvent}"

    def compute(self, bench: Bench) -> float:
        gas = bench.relaxed(self.level)
        return bench.energy(gas, self.level, 0, self.solvent) - bench.energy(gas, self.level)


def simulate(smiles: str, key: str, recipes: list[Recipe], record: MoleculeRecord | None = None):
    """Compute every recipe the record lacks; the task a simulation worker runs.

    A molecule that cannot be embedded, or whose xTB run fails, gets the reason in
    ``record.failures`` instead of a value: the campaign goes on.
    """
    record = record or MoleculeRecord(key=key, smiles=smiles)
    try:
        bench = Bench(record)
    except chemistry.EmbeddingError as error:
        for recipe in recipes:
            record.failures[recipe.name] = str(error)
        return record
    for recipe in recipes:
        if recipe.name in record.properties:
            continue
        try:
            record.properties[recipe.name] = float(recipe.compute(bench))
            record.failures.pop(recipe.name, None)
        except (chemistry.EmbeddingError, chemistry.SimulationError) as error:
            record.failures[recipe.name] = str(error)
    return record
