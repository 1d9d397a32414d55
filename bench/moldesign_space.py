"""A large, reproducible search space for the molecular-design app: ``n`` distinct small
organic molecules grown from the 1,000 QM9 molecules of ``examples/moldesign/qm9-1000.smi``.

    python bench/moldesign_space.py --n 100000 --seed 0 --out /tmp/space-100k.smi.gz

How the molecules are made: a pool starts as the QM9 molecules. Each step draws a parent
(a QM9 molecule half of the time, otherwise a molecule made earlier, so the space drifts
away from QM9 a few edits at a time) and applies one random edit to its Kekulé form:

- add a C, N, O or F atom on an atom that has a hydrogen to spare (single or double bond);
- change an atom's element to C, N, O or F;
- remove a terminal atom;
- change a non-ring bond, or a ring bond, to single, double or triple;
- close a ring between two atoms 2 to 5 bonds apart (rings of 3 to 6 atoms);
- open a ring by removing one of its bonds.

An edit is kept when RDKit sanitizes the result and it is one neutral fragment (no formal
charges, no radicals) of 3 to :data:`MAX_HEAVY` heavy atoms of C, N, O and F, with no triple
bond in a ring, no O-O, O-F, N-F or F-F bond, no ring larger than 8 atoms, and a canonical
SMILES (non-isomeric) not seen before and not that of a QM9 molecule. Its InChIKey must be
new as well: the app keys its records by InChIKey, and two tautomers such as ``Oc1ncco1``
and ``O=c1[nH]cco1`` share one. Every kept SMILES is parsed again to check that it
round-trips. The kept molecules are shuffled with the same seed and written one per line to
a gzip file whose header carries no name or time, so the same ``n`` and ``seed`` give a
byte-identical file (with the same RDKit version: canonical SMILES may differ between
versions). Single process: the sequence of random draws is what makes it reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import time
from pathlib import Path

from rdkit import Chem
from rdkit.rdBase import BlockLogs

ROOT = Path(__file__).resolve().parents[1]
QM9 = ROOT / "examples" / "moldesign" / "qm9-1000.smi"
DEFAULT_OUT = Path("/tmp/space-100k.smi.gz")

MAX_HEAVY = 12
"""Most heavy atoms a generated molecule may have (QM9 stops at 9)."""
MIN_HEAVY = 3
ELEMENTS = (6, 6, 6, 7, 7, 8, 8, 9)
"""Atomic numbers drawn for new or changed atoms: carbon, nitrogen and oxygen most often."""
ALLOWED = frozenset({6, 7, 8, 9})
BOND_TYPES = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)
UNSTABLE_PAIRS = ({8}, {9}, {8, 9}, {7, 9})
"""Bonds refused: O-O (peroxides), F-F, O-F and N-F."""
EDITS = ("add", "add", "add", "element", "element", "remove", "bond", "ring", "open")
"""Edits drawn uniformly from this tuple, so growing is the most frequent."""


def read_qm9(path: Path = QM9) -> list[str]:
    """The QM9 SMILES in file order (first word of each non-empty line)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def canonical_key(smiles: str) -> str | None:
    """Canonical non-isomeric SMILES of ``smiles``, or ``None`` if RDKit cannot parse it."""
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def inchi_key(smiles: str) -> str | None:
    """The InChIKey (what the app's records are keyed by), or ``None`` if there is none."""
    mol = Chem.MolFromSmiles(smiles)
    return (Chem.MolToInchiKey(mol) or None) if mol is not None else None


def _kekule(smiles: str) -> Chem.RWMol | None:
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    Chem.RemoveStereochemistry(mol)
    Chem.Kekulize(mol, clearAromaticFlags=True)
    rw = Chem.RWMol(mol)
    for atom in rw.GetAtoms():
        if atom.GetFormalCharge() == 0:
            atom.SetNumExplicitHs(0)  # hydrogens are recomputed after each edit
            atom.SetNoImplicit(False)
    return rw


def _free_h(atom: Chem.Atom) -> int:
    return atom.GetTotalNumHs()


def _edit(rw: Chem.RWMol, rng: random.Random) -> bool:
    """Apply one random edit to ``rw`` in place; False if the drawn edit does not apply."""
    n = rw.GetNumAtoms()
    kind = rng.choice(EDITS)
    if kind == "add":
        if n >= MAX_HEAVY:
            return False
        sites = [a.GetIdx() for a in rw.GetAtoms() if _free_h(a) > 0]
        if not sites:
            return False
        site = rng.choice(sites)
        new = rw.AddAtom(Chem.Atom(rng.choice(ELEMENTS)))
        order = Chem.BondType.DOUBLE if rng.random() < 0.2 else Chem.BondType.SINGLE
        rw.AddBond(site, new, order)
        return True
    if kind == "element":
        atom = rw.GetAtomWithIdx(rng.randrange(n))
        element = rng.choice(ELEMENTS)
        if element == atom.GetAtomicNum():
            return False
        atom.SetAtomicNum(element)
        atom.SetFormalCharge(0)
        atom.SetNumExplicitHs(0)
        atom.SetNoImplicit(False)
        return True
    if kind == "remove":
        ends = [a.GetIdx() for a in rw.GetAtoms() if a.GetDegree() == 1]
        if n <= MIN_HEAVY or not ends:
            return False
        rw.RemoveAtom(rng.choice(ends))
        return True
    if kind == "bond":
        if rw.GetNumBonds() == 0:
            return False
        bond = rw.GetBondWithIdx(rng.randrange(rw.GetNumBonds()))
        order = rng.choice(BOND_TYPES)
        if bond.GetBondType() == order:
            return False
        bond.SetBondType(order)
        return True
    if kind == "ring":
        distances = Chem.GetDistanceMatrix(rw)
        pairs = [
            (i, j)
            for i in range(n)
            for j in range(i + 1, n)
            if 2 <= distances[i][j] <= 5
            and _free_h(rw.GetAtomWithIdx(i)) > 0
            and _free_h(rw.GetAtomWithIdx(j)) > 0
        ]
        if not pairs:
            return False
        i, j = rng.choice(pairs)
        rw.AddBond(i, j, Chem.BondType.SINGLE)
        return True
    # "open": remove a ring bond (the molecule stays one piece)
    ring_bonds = [b.GetIdx() for b in rw.GetBonds() if b.IsInRing()]
    if not ring_bonds:
        return False
    bond = rw.GetBondWithIdx(rng.choice(ring_bonds))
    rw.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
    return True


def _accept(rw: Chem.RWMol) -> tuple[str, Chem.Mol] | None:
    """Canonical SMILES of the edited molecule and the molecule parsed back from it, if it
    passes every check; else ``None``."""
    mol = rw.GetMol()
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(False)
        atom.SetNumExplicitHs(0)
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # valence, kekulization: RDKit raises several kinds
        return None
    heavy = mol.GetNumAtoms()
    if not MIN_HEAVY <= heavy <= MAX_HEAVY:
        return None
    for atom in mol.GetAtoms():
        if (
            atom.GetAtomicNum() not in ALLOWED
            or atom.GetFormalCharge() != 0
            or atom.GetNumRadicalElectrons() != 0
        ):
            return None
    for bond in mol.GetBonds():
        if bond.GetBondType() == Chem.BondType.TRIPLE and bond.IsInRing():
            return None
        pair = {bond.GetBeginAtom().GetAtomicNum(), bond.GetEndAtom().GetAtomicNum()}
        if pair in UNSTABLE_PAIRS:
            return None
    rings = mol.GetRingInfo().AtomRings()
    if any(len(ring) > 8 for ring in rings):
        return None
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    if "." in smiles:
        return None
    # The written text must stand on its own: parse it again and demand the same SMILES.
    again = Chem.MolFromSmiles(smiles)
    if again is None or Chem.MolToSmiles(again, isomericSmiles=False) != smiles:
        return None
    return smiles, again


def generate(n: int = 100_000, seed: int = 0, qm9: Path = QM9) -> list[str]:
    """``n`` distinct canonical SMILES grown from the QM9 molecules, in a seeded order."""
    if n < 1:
        raise ValueError(f"n must be 1 or more, got {n}")
    rng = random.Random(seed)
    parents = read_qm9(qm9)
    with BlockLogs():
        seen = {key for key in map(canonical_key, parents) if key is not None}
        seen_inchi = {key for key in map(inchi_key, parents) if key is not None}
        made: list[str] = []
        attempts = 0
        while len(made) < n:
            attempts += 1
            if attempts > 200 * n + 100_000:
                raise RuntimeError(f"made only {len(made)} of {n} molecules in {attempts} edits")
            parent = rng.choice(parents) if not made or rng.random() < 0.5 else rng.choice(made)
            rw = _kekule(parent)
            if rw is None or not _edit(rw, rng):
                continue
            accepted = _accept(rw)
            if accepted is None or accepted[0] in seen:
                continue
            smiles, mol = accepted
            seen.add(smiles)
            key = Chem.MolToInchiKey(mol)
            if not key or key in seen_inchi:
                continue
            seen_inchi.add(key)
            made.append(smiles)
    rng.shuffle(made)
    return made


def make_space(n: int = 100_000, seed: int = 0, out: Path = DEFAULT_OUT) -> Path:
    """Write ``n`` generated SMILES to ``out`` (gzip if it ends in ``.gz``); return ``out``.

    The gzip header holds no file name and a zero time stamp, so reruns are byte-identical.
    """
    out = Path(out)
    text = "".join(f"{smiles}\n" for smiles in generate(n, seed)).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.endswith(".gz"):
        with (
            out.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle,
        ):
            handle.write(text)
    else:
        out.write_bytes(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="molecules to make")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .smi[.gz]")
    args = parser.parse_args()
    started = time.perf_counter()
    path = make_space(args.n, args.seed, args.out)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"made {args.n} molecules in {seconds:.1f} s -> {path}")
    print(f"sha256 {digest}")


if __name__ == "__main__":
    main()
