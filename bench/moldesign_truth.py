"""Brute-force ground truth for the molecular-design benchmark: every molecule of the
1,000-molecule QM9 example with its vertical and adiabatic GFN2-xTB ionization potential
and the seconds each took (one core each).

    python bench/moldesign_truth.py [--processes 2] [--out bench/data/qm9-1000-ip-gfn2.jsonl]

Resumable: molecules already in the output file are skipped. The selection benchmark
(bench/moldesign.py) replays campaigns from this file with
``steersman.apps.moldesign.replay.Replay``. Seconds are CPU seconds of one process.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "examples" / "moldesign" / "qm9-1000.smi"
OUT = ROOT / "bench" / "data" / "qm9-1000-ip-gfn2.jsonl"
VERTICAL = "ip-vertical-gfn2"
ADIABATIC = "ip-adiabatic-gfn2"


def read_space(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split()[0])
    return out


def one(smiles: str) -> dict:
    """Vertical first (relaxed neutral + cation single point), then adiabatic (relax the
    cation), timing each stage: the cheap and the expensive level of a two-level search."""
    from steersman.apps.moldesign.chemistry import molecule_key
    from steersman.apps.moldesign.recipes import IonizationPotential, simulate

    key = molecule_key(smiles)
    start = time.process_time()
    record = simulate(smiles, key, [IonizationPotential(vertical=True)])
    middle = time.process_time()
    record = simulate(smiles, key, [IonizationPotential(vertical=False)], record)
    end = time.process_time()
    # The replay table's format (steersman.apps.moldesign.replay): seconds in the order
    # computed, each on top of the ones before.
    return {
        "smiles": smiles,
        "key": key,
        "properties": record.properties,
        "seconds": {VERTICAL: round(middle - start, 3), ADIABATIC: round(end - middle, 3)},
        "failures": record.failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    space = read_space(SPACE)
    done = set()
    if args.out.exists():
        done = {json.loads(line)["smiles"] for line in args.out.read_text().splitlines() if line}
    todo = [s for s in space if s not in done]
    print(f"{len(done)} done, {len(todo)} to compute with {args.processes} processes")
    start = time.perf_counter()
    with get_context("spawn").Pool(args.processes) as pool, args.out.open("a") as out:
        for n, row in enumerate(pool.imap_unordered(one, todo, chunksize=1), 1):
            out.write(json.dumps(row) + "\n")
            out.flush()
            if n % 50 == 0:
                rate = n / (time.perf_counter() - start)
                print(f"{n}/{len(todo)}  {rate:.2f}/s", flush=True)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
