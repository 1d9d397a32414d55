"""Run a campaign from its spec, then write its report.

The run directory holds:

- ``database.jsonl``  every molecule's record (geometries, energies, properties, failures);
- ``tasks.jsonl``     every task: method, worker, attempt, created/started/finished times;
- ``events.jsonl``    retrains and the model's predictions next to what was then measured;
- ``run.log``         the log;
- ``best.md``         the table of the best molecules;
- ``report.md``       the summary and its plots (``*.png``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from steersman import Queues, WorkerPool
from steersman.apps.moldesign import recipes as recipes_module
from steersman.apps.moldesign.spec import Spec
from steersman.apps.moldesign.store import MoleculeStore
from steersman.apps.moldesign.thinkers import INFER, SIMULATE, TRAIN, infer_space, train_model


@dataclass
class Outcome:
    run_dir: Path
    simulations: int
    """Simulation tasks that returned, every level counted."""
    failures: int
    best: list[tuple[str, float]]
    report: Path
    utilization: float | None
    wall_seconds: float
    stopped_early: bool
    molecules: int = 0
    """Molecules in the database."""
    core_seconds: dict[str, float] | None = None
    """Simulation-worker busy seconds (one core each) by level: "full", and "cheap" for a
    multi-fidelity run's screenings."""


def run_campaign(spec: Spec, progress=None) -> Outcome:
    """Run ``spec`` to its budget (or resume it), write the report, return what it found."""
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = logging.FileHandler(run_dir / "run.log")
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("steersman")
    root.addHandler(log)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    space = spec.load_space()
    started = time.perf_counter()
    broker = None
    if spec.workers.redis is not None:
        from steersman.brokers.redis import RedisBroker

        broker = RedisBroker(spec.workers.redis, spec.workers.namespace)
    queues = Queues(
        methods={SIMULATE: SIMULATE, TRAIN: "ml", INFER: "ml"},
        topics=[SIMULATE, "ml"],
        broker=broker,
    )
    simulate = spec.simulator or recipes_module.simulate
    store = MoleculeStore(spec.database)
    thinker = None
    stopped = False
    try:
        pools = []
        if spec.workers.local:
            pools = [
                WorkerPool(queues, {SIMULATE: simulate}, workers=spec.workers.simulation),
                WorkerPool(
                    queues, {TRAIN: train_model, INFER: infer_space}, workers=spec.workers.ml
                ),
            ]
        for pool in pools:
            pool.start()
        # The campaign's clock starts with workers that are up, not still importing.
        for pool in pools:
            pool.wait_for_workers(timeout=120)
        try:
            thinker = spec.thinker(queues, spec, space, store, progress, **spec.thinker_options)
            try:
                thinker.run()
            except KeyboardInterrupt:
                stopped = True  # every stored record is complete; the report says so
        finally:
            for pool in pools:
                pool.stop()
    finally:
        if thinker is not None:
            thinker.close()
        store.close()
        queues.close()
        root.removeHandler(log)
        log.close()
    wall = time.perf_counter() - started
    return write_report(spec, wall, stopped_early=stopped)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows


def write_report(spec: Spec, wall_seconds: float = 0.0, stopped_early: bool = False) -> Outcome:
    """Write ``best.md``, the plots and ``report.md`` from what the run directory holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(spec.run_dir)
    objective = spec.recipes[0].name
    with MoleculeStore(spec.database) as store:
        records = list(store)
    tasks = _read_jsonl(run_dir / "tasks.jsonl")
    events = _read_jsonl(run_dir / "events.jsonl")
    sims = sorted(
        (t for t in tasks if t["method"] == SIMULATE), key=lambda t: t.get("received") or 0
    )
    value_of = {}
    for record in records:
        if objective in record.properties:
            value_of[record.smiles] = record.properties[objective]
    # Molecules a recipe failed on (any level: a cheap screening's failure counts too), and
    # simulation tasks that failed as tasks (a crash, a timeout).
    failures = sum(1 for r in records if r.failures) + sum(1 for t in sims if not t["success"])
    ranked = sorted(value_of.items(), key=lambda kv: -kv[1])[:10]

    others = [r.name for r in spec.recipes[1:]]
    by_smiles = {r.smiles: r for r in records}

    def cell(smiles: str, name: str) -> str:
        value = by_smiles[smiles].properties.get(name)
        return "-" if value is None else f"{value:.3f}"

    header = " | ".join([objective, *others])
    lines = [f"| rank | SMILES | {header} |", "| --- | --- |" + " --- |" * (1 + len(others))]
    lines += [
        f"| {n} | `{s}` | {' | '.join(cell(s, name) for name in [objective, *others])} |"
        for n, (s, _) in enumerate(ranked, 1)
    ]
    best_table = "\n".join(lines)
    (run_dir / "best.md").write_text(f"# Best molecules by {objective}\n\n{best_table}\n")

    # 1. Best property against simulations done, in the order results arrived.
    running, best = [], -np.inf
    ordered_values = _values_in_order(sims, value_of)
    for value in ordered_values:
        if value is not None:
            best = max(best, value)
        running.append(best if np.isfinite(best) else np.nan)
    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot(np.arange(1, len(running) + 1), running, drawstyle="steps-post")
    axes.set_xlabel("simulations done")
    axes.set_ylabel(f"best {objective}")
    axes.set_title("Best found")
    figure.tight_layout()
    figure.savefig(run_dir / "best_vs_simulations.png", dpi=110)
    plt.close(figure)

    # 2. Model error against training size (predictions made before each measurement).
    predictions = [e for e in events if e["event"] == "prediction"]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    if predictions:
        sizes = sorted({e["training_size"] for e in predictions})
        errors = [
            np.mean(
                [
                    abs(e["predicted"] - e["measured"])
                    for e in predictions
                    if e["training_size"] == n
                ]
            )
            for n in sizes
        ]
        axes.plot(sizes, errors, marker="o")
    else:
        axes.text(0.5, 0.5, "no model predictions in this run", ha="center", va="center")
    axes.set_xlabel("training set size")
    axes.set_ylabel("mean absolute error of the next picks")
    axes.set_title("Model error")
    figure.tight_layout()
    figure.savefig(run_dir / "model_error.png", dpi=110)
    plt.close(figure)

    # 3. Simulation-worker utilization over time.
    utilization = None
    intervals = [
        (t["started"], t["finished"]) for t in sims if t.get("started") and t.get("finished")
    ]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    if intervals:
        begin = min(t["created"] for t in sims)
        end = max(t["received"] or t["finished"] for t in sims)
        grid = np.linspace(begin, end, 400)
        busy = np.zeros_like(grid)
        for a, b in intervals:
            busy += (grid >= a) & (grid < b)
        n_sim = spec.workers.simulation
        axes.plot(grid - begin, busy / n_sim * 100)
        busy_time = sum(b - a for a, b in intervals)
        utilization = busy_time / (n_sim * (end - begin)) if end > begin else None
    axes.set_xlabel("seconds since the first simulation was sent")
    axes.set_ylabel("simulation workers busy (%)")
    axes.set_ylim(0, 105)
    axes.set_title("Utilization")
    figure.tight_layout()
    figure.savefig(run_dir / "utilization.png", dpi=110)
    plt.close(figure)

    core_seconds: dict[str, float] = {}
    for t in sims:
        if t.get("started") and t.get("finished"):
            level = t.get("level") or "full"
            core_seconds[level] = core_seconds.get(level, 0.0) + t["finished"] - t["started"]
    spent = ", ".join(f"{level} {seconds:,.0f}" for level, seconds in sorted(core_seconds.items()))
    retrains = sum(1 for e in events if e["event"] == "ranked")
    counted = f"{len(sims)} of a budget of {spec.num_to_run} ({len(records)} molecules)"
    used = "n/a" if utilization is None else f"{utilization:.1%}"
    report = run_dir / "report.md"
    report.write_text(
        f"""# Campaign report

- search space: {", ".join(map(str, spec.search_space))}
- objective: {objective}; recipes: {", ".join(r.name for r in spec.recipes)}
- thinker: {spec.thinker.__name__}; scorer: {spec.scorer!r}; selector: {spec.selector!r}
- simulations with a result: {counted}; failed: {failures}
- simulation core-seconds: {sum(core_seconds.values()):,.0f} ({spent or "none"})
- model retrains: {retrains}
- simulation workers busy: {used} of the time ({spec.workers.simulation} workers)

## Best molecules

{best_table}

## Best found against simulations done

![best](best_vs_simulations.png)

## Model error against training size

![model error](model_error.png)

## Simulation-worker utilization

![utilization](utilization.png)
"""
    )
    return Outcome(
        run_dir=run_dir,
        simulations=len(sims),
        molecules=len(records),
        core_seconds=core_seconds,
        failures=failures,
        best=ranked,
        report=report,
        utilization=utilization,
        wall_seconds=wall_seconds,
        stopped_early=stopped_early,
    )


def _values_in_order(sims: list[dict], value_of: dict[str, float]) -> list[float | None]:
    """The objective of each simulation, in the order their results arrived (none for a
    cheap-level screening)."""
    return [
        value_of.get(t.get("smiles")) if t["success"] and t.get("level") != "cheap" else None
        for t in sims
    ]
