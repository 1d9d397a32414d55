"""Real chemistry on the simulation workers: SMILES to 3D, then GFN-xTB through tblite.

Energies are in eV and geometries in Å. Each function here runs inside a worker process;
``OMP_NUM_THREADS=1`` is set before tblite loads, so two workers on two cores do not fight
over threads.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import io

import numpy as np

LEVELS = {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB"}
"""Levels of theory by their short name in records and recipe names."""

FMAX = 0.02
"""Relaxations stop when every force is below this (eV/Å)."""
MAX_STEPS = 300


class EmbeddingError(ValueError):
    """RDKit could not make 3D coordinates for a molecule."""


class SimulationError(RuntimeError):
    """xTB did not converge, or a relaxation did not finish."""


def canonical(smiles: str) -> str:
    """RDKit's canonical SMILES; ValueError for one RDKit cannot read."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}")
    return Chem.MolToSmiles(mol)


def molecule_key(smiles: str) -> str:
    """The InChIKey of a molecule: the record's identity whatever SMILES spelled it."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}")
    return Chem.MolToInchiKey(mol) or Chem.MolToSmiles(mol)


def formal_charge(smiles: str) -> int:
    """The molecule's net charge as the SMILES writes it (0 for a neutral molecule)."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise EmbeddingError(f"RDKit cannot parse the SMILES {smiles!r}")
    return Chem.GetFormalCharge(mol)


def embed(smiles: str, seed: int = 42) -> str:
    """3D coordinates as XYZ text: ETKDG, then MMFF (UFF where MMFF has no parameters).

    Falls back to random starting coordinates when ETKDG fails; raises
    :class:`EmbeddingError` if that fails too.
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise EmbeddingError(f"RDKit cannot parse the SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise EmbeddingError(f"could not embed {smiles!r} in 3D (ETKDG, then random coords)")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    return Chem.MolToXYZBlock(mol)


def read_xyz(xyz: str):
    """ASE Atoms from XYZ text."""
    from ase.io import read

    return read(io.StringIO(xyz), format="xyz")


def write_xyz(atoms) -> str:
    """XYZ text of ASE Atoms."""
    lines = [str(len(atoms)), ""]
    for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True):
        lines.append(f"{symbol} {x:.6f} {y:.6f} {z:.6f}")
    return "\n".join(lines) + "\n"


def multiplicity(atoms, charge: int) -> int:
    """Lowest spin multiplicity for this charge: singlet for an even electron count."""
    electrons = int(np.sum(atoms.numbers)) - charge
    return 1 if electrons % 2 == 0 else 2


def _calculator(atoms, level: str, charge: int, solvent: str | None):
    from tblite.ase import TBLite

    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; known: {', '.join(LEVELS)}")
    return TBLite(
        method=LEVELS[level],
        charge=charge,
        multiplicity=multiplicity(atoms, charge),
        solvation=("alpb", solvent) if solvent else None,
        verbosity=0,
    )


def single_point(xyz: str, level: str, charge: int = 0, solvent: str | None = None) -> float:
    """Energy (eV) of this geometry at ``level``, ``charge``, in ``solvent`` (ALPB) or gas."""
    atoms = read_xyz(xyz)
    atoms.calc = _calculator(atoms, level, charge, solvent)
    try:
        return float(atoms.get_potential_energy())
    except Exception as error:  # tblite raises plain exceptions for SCF failures
        raise SimulationError(
            f"xTB single point failed ({level}, charge {charge}): {error}"
        ) from None


def relax(xyz: str, level: str, charge: int = 0, solvent: str | None = None) -> tuple[str, float]:
    """Relax the geometry with LBFGS until forces are below :data:`FMAX`; (xyz, energy)."""
    from ase.optimize import LBFGS

    atoms = read_xyz(xyz)
    atoms.calc = _calculator(atoms, level, charge, solvent)
    try:
        converged = LBFGS(atoms, logfile=None).run(fmax=FMAX, steps=MAX_STEPS)
        energy = float(atoms.get_potential_energy())
    except Exception as error:
        raise SimulationError(
            f"xTB relaxation failed ({level}, charge {charge}): {error}"
        ) from None
    if not converged:
        raise SimulationError(
            f"relaxation did not converge in {MAX_STEPS} steps ({level}, charge {charge})"
        )
    return write_xyz(atoms), energy
