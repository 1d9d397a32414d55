"""Molecular-design selection efficiency over many seeds, offline.

``bench/moldesign.py`` runs real campaigns (workers, broker, replayed simulation times), so
it affords 5 seeds; the seed-to-seed spread of its main figure is large enough that a
5-seed mean cannot tell two models apart. This replays the campaign's decisions without
any of that machinery, so it can run many seeds, with the package's own scorers and
selectors:

- Space: ``examples/moldesign/qm9-1000.smi`` as ``Spec.load_space`` reads it. Truth: the
  adiabatic ionization potentials of ``bench/data/qm9-1000-ip-gfn2.jsonl``; a molecule with
  none (it failed) costs a simulation and teaches nothing.
- Starters: the molecules of ``default_rng(seed).permutation(1000)`` in order until 8 have
  values, as ``SingleStepThinker`` takes them (``initial_order``, ``min_training``).
- Then one pick at a time with ``--pending`` simulations in flight (default 2, as the real
  campaign with 2 workers behaves): the model is trained on every value measured
  plus each pending molecule at the mean the model predicted for it when it was picked (the
  kriging believer), predicts the molecules not yet picked, and the selector picks the next
  (EI against the best value measured); then, if that makes more than ``--pending`` in
  flight, the oldest pending result arrives.
- Figures per seed: simulations started (the pending ones included) when the 9th of the true
  top 10 arrives, stopping at 400; how many of the top 10 are among the first 100
  simulations. Differences against the first strategy are paired by seed.

Run with ``make bench-moldesign-offline``; rewrites the offline molecular-design section
of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from collections import deque
from pathlib import Path

import numpy as np
from rich.console import Console

from run import DOC, machine, markdown_table, print_table, write_section
from steersman.apps.moldesign.recipes import IonizationPotential
from steersman.apps.moldesign.scorers import (
    FittedTanimotoDescriptorGP,
    FittedTanimotoGP,
    TanimotoGP,
)
from steersman.apps.moldesign.selectors import EISelector, UCBSelector
from steersman.apps.moldesign.spec import Spec

BENCH = Path(__file__).resolve().parent
SPACE = BENCH.parent / "examples" / "moldesign" / "qm9-1000.smi"
TRUTH = BENCH / "data" / "qm9-1000-ip-gfn2.jsonl"
OBJECTIVE = "ip-adiabatic-gfn2"
STARTERS, FLOOR, CAP = 8, 100, 400
BEGIN, END = "<!-- bench:moldesign-offline:begin -->", "<!-- bench:moldesign-offline:end -->"

STRATEGIES = {
    "(1) TanimotoGP + UCB (β=2)": (TanimotoGP, lambda: UCBSelector(beta=2.0)),
    "(2) FittedTanimotoGP + EI": (FittedTanimotoGP, EISelector),
    "(3) FittedTanimotoGP + UCB (β=2)": (FittedTanimotoGP, lambda: UCBSelector(beta=2.0)),
    "(4) TanimotoGP + EI": (TanimotoGP, EISelector),
    "(5) FittedTanimotoDescriptorGP + EI": (FittedTanimotoDescriptorGP, EISelector),
    "(6) FittedTanimotoDescriptorGP + EI (k=3)": (
        FittedTanimotoDescriptorGP,
        lambda: EISelector(incumbent_rank=3),
    ),
}


def load() -> tuple[list[str], np.ndarray]:
    """The space in file order and each molecule's true value (NaN where it failed)."""
    space = Spec(
        search_space=SPACE,
        recipes=[IonizationPotential(vertical=False)],
        scorer=TanimotoGP(),
        selector=EISelector(),
        num_to_run=CAP,
    ).load_space()
    rows = {r["smiles"]: r for r in map(json.loads, TRUTH.read_text().splitlines())}
    truth = np.array([rows[s]["properties"].get(OBJECTIVE, np.nan) for s in space])
    return space, truth


def campaign(
    scorer,
    selector,
    X: np.ndarray,
    truth: np.ndarray,
    top10: set[int],
    seed: int,
    pending: int = 1,
    starters: int = STARTERS,
):
    """One seed: (simulations when the 9th of the top 10 arrived or None, top 10 in the
    first ``FLOOR``).

    ``pending`` picks are in flight at a time: each enters training at the mean predicted
    for it when it was picked (the kriging believer), and the oldest one's result arrives
    when a new pick makes ``pending`` of them. ``starters`` values are measured before the
    first model.
    """
    if pending < 1:
        raise ValueError(f"pending must be 1 or more, got {pending}")
    if starters < 1:
        raise ValueError(f"starters must be 1 or more, got {starters}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(truth))
    readable = X.any(axis=1)  # the thinker does not rank molecules with no features
    picked: list[int] = []
    measured: list[int] = []  # picked and with a value
    found, to_9 = 0, None

    def arrive(index: int) -> None:
        nonlocal found, to_9
        if np.isfinite(truth[index]):
            measured.append(index)
        if index in top10:
            found += 1
            if found == 9 and to_9 is None:
                to_9 = len(picked)

    for index in order:  # starters, until enough values for a model
        if len(measured) >= starters:
            break
        picked.append(int(index))
        arrive(int(index))
    flight: deque[tuple[int, float]] = deque()  # (molecule, believed value), oldest first
    while len(picked) < CAP and (to_9 is None or len(picked) < FLOOR):
        rows = list(measured) + [i for i, _ in flight]
        values = list(truth[measured]) + [v for _, v in flight]
        model = scorer.fit(X[rows], np.asarray(values))
        taken = np.zeros(len(truth), dtype=bool)
        taken[picked] = True
        pool = np.flatnonzero(~taken & readable)
        mean, std = model.predict(X[pool])
        observed = truth[measured]
        choice = selector.select(
            mean, std, 1, best=float(observed.max()), observed=observed, rng=rng
        )[0]
        picked.append(int(pool[choice]))
        if len(flight) == pending:
            arrive(flight.popleft()[0])
        flight.append((int(pool[choice]), float(mean[choice])))
    while flight:
        arrive(flight.popleft()[0])
    return to_9, len(set(picked[:FLOOR]) & top10)


def summary(values: list[int | None]) -> tuple[str, str, str, str]:
    """Mean, median and min to max over seeds that got there; '> CAP' for those that did not."""
    done = [v for v in values if v is not None]
    missed = len(values) - len(done)
    if not done:
        return f"> {CAP}", f"> {CAP}", "-", "-"
    ranked = sorted(v if v is not None else math.inf for v in values)
    median = statistics.median(ranked)
    mean = f"{statistics.mean(done):.1f}" + (f" ({missed} > {CAP})" if missed else "")
    return (
        mean,
        f"> {CAP}" if math.isinf(median) else f"{median:.1f}",
        f"{min(done)}–{max(done)}" if not missed else f"{min(done)}–>{CAP}",
        f"{statistics.mean(done) / 10:.1f}%",
    )


def paired(values: list[int | None], reference: list[int | None]) -> str:
    """Mean difference ± its standard error over seeds where both got there."""
    pairs = [a - b for a, b in zip(values, reference, strict=True) if None not in (a, b)]
    if len(pairs) < 2:
        return "-"
    se = statistics.stdev(pairs) / math.sqrt(len(pairs))
    note = f" ({len(pairs)} seeds)" if len(pairs) < len(values) else ""
    return f"{statistics.mean(pairs):+.1f} ± {se:.1f}{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--first", type=int, default=100, help="first seed")
    parser.add_argument(
        "--strategies",
        default="1,2,3,4,5,6",
        help="comma list of strategy numbers, in this order: " + "; ".join(STRATEGIES),
    )
    parser.add_argument(
        "--pending",
        type=int,
        default=2,
        help="simulations in flight at a time (the real campaign with 2 workers acts like 2)",
    )
    args = parser.parse_args()
    if args.pending < 1:
        parser.error(f"--pending: expected 1 or more, got {args.pending}")
    names = list(STRATEGIES)
    numbers = [s.strip() for s in args.strategies.split(",")]
    if not all(n.isdigit() and 1 <= int(n) <= len(names) for n in numbers):
        parser.error(f"--strategies: expected numbers from 1 to {len(names)}, comma-separated")
    chosen = [names[int(n) - 1] for n in numbers]
    console = Console()
    space, truth = load()
    measured = np.flatnonzero(np.isfinite(truth))
    top10 = {int(i) for i in measured[np.argsort(-truth[measured])[:10]]}
    features = {}
    for kind in {STRATEGIES[name][0] for name in chosen}:  # once per featurizer
        features[kind] = kind().featurizer(space)
    seeds = range(args.first, args.first + args.seeds)
    results: dict[str, list[tuple[int | None, int]]] = {name: [] for name in chosen}
    started = time.perf_counter()
    for seed in seeds:  # seeds outermost, so a slow stretch touches every strategy alike
        for name in chosen:
            kind, selector = STRATEGIES[name]
            t0 = time.perf_counter()
            to_9, at_100 = campaign(
                kind(), selector(), features[kind], truth, top10, seed, pending=args.pending
            )
            results[name].append((to_9, at_100))
            console.print(
                f"seed {seed} {name:<41} to 9 of top 10: {to_9 or f'> {CAP}':>5}, "
                f"at {FLOOR}: {at_100}, {time.perf_counter() - t0:.1f} s"
            )
    seconds = time.perf_counter() - started
    report(console, results, len(space), seeds, seconds, args.pending)


def report(console, results, size, seeds, seconds, pending) -> None:
    headers = [
        "strategy",
        "simulations to 9 of top 10: mean",
        "median",
        "min–max",
        f"mean, % of {size:,}",
        f"top 10 in first {FLOOR}: mean",
        f"paired difference of the mean vs {next(iter(results)).split()[0]} ± SE",
    ]
    reference = [to_9 for to_9, _ in next(iter(results.values()))]
    rows = []
    for i, (name, runs) in enumerate(results.items()):
        to_9 = [t for t, _ in runs]
        rows.append(
            [
                name,
                *summary(to_9),
                f"{statistics.mean(a for _, a in runs):.2f}",
                "(reference)" if i == 0 else paired(to_9, reference),
            ]
        )
    span = f"seeds {seeds.start}–{seeds.stop - 1}"
    print_table(
        console, f"Offline replica on {size:,} QM9 molecules, {len(seeds)} {span}", headers, rows
    )
    console.print(f"{seconds:.0f} s in all")

    today = datetime.date.today().isoformat()
    lines = [
        BEGIN,
        f"Measured {today} on {machine()}, by `make bench-moldesign-offline` "
        f"(`bench/moldesign_offline.py`): {len(seeds)} seeds ({span}), {seconds:.0f} s in "
        "one process.",
        "",
        "The campaign of the section above, replayed as a plain loop so that many seeds are "
        f"affordable: same space, same truth table, same starters (the seed's random "
        f"permutation in order until {STARTERS} molecules have values), the package's own "
        "scorers and selectors, the model retrained after every result and the molecules "
        "still being simulated counted at their predicted means (the kriging believer), "
        f"failures counted as simulations, a stop at {CAP}. It does not reproduce the real "
        f"thinker's concurrency: here {pending} pick(s) are pending at a time, where the "
        "campaign keeps up to 3 "
        "in flight (2 workers plus `queue_ahead=1`), ranks a batch of 8 at each retraining "
        "and may pick from a model a result or two behind; nor does it model time (how long "
        "simulations and retraining take). Its figures are therefore close to, not equal "
        "to, the campaign's; its use is comparing models and selectors on many seeds, the "
        "differences paired by seed.",
        "",
        "Simulations to 9 of the top 10 count every simulation started by the time the 9th "
        "arrived (starters and failures too); the last column is the mean over seeds of the "
        "strategy's figure minus the reference's on the same seed, with its standard error. "
        f"A seed that reaches {CAP} without 9 of the top 10 is left out of the mean and the "
        "pairs, and shown apart.",
        "",
        *markdown_table(headers, rows),
        "",
        END,
    ]
    write_section(BEGIN, END, lines, heading="## Molecular design, many seeds offline")
    console.print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
