"""Time the molecular-design app's inference over a large search space, the way a campaign
runs it.

    python bench/moldesign_inference.py /tmp/space-100k.smi.gz [--n-train 200] [--seed 0]
        [--workers 2] [--cache-dir DIR] [--json OUT.json]

The path is the one :class:`~steersman.apps.moldesign.thinkers.SingleStepThinker` drives
through :func:`~steersman.apps.moldesign.run.run_campaign`:

1. the space is read like ``Spec.load_space`` (first word of each line, each SMILES once);
2. a :class:`~steersman.apps.moldesign.scorers.TanimotoGP` (Morgan count fingerprints,
   r=2, 2048 bits; or the scorer given) is trained
   by the app's ``train_model`` task on an ML worker;
3. the candidates (here: every molecule of the space) are split with ``np.array_split`` into
   one chunk per ML worker, and each chunk is sent to the ML pool as an ``infer_space`` task
   together with the whole space and the feature-cache directory. ``infer_space`` gets the
   features of the *whole* space from this worker's memory, else from
   :class:`~steersman.apps.moldesign.scorers.FeatureCache` (disk, else computed and stored),
   then predicts its chunk with ``infer_features`` (``Scorer.predict``, 10,000 rows at a
   time). Features come row by row (``FeatureRows``): each worker computes only the rows of
   its chunk it has not got, and stores them in the cache directory for the others and for
   later runs.

The workers are a real :class:`~steersman.WorkerPool` of ``workers`` processes on the
embedded broker, as ``run_campaign`` starts them. The only addition is a thin wrapper run on
the worker around ``infer_space`` that reads how long its features took (``FeatureRows.spent``:
the featurize seconds; the rest of the task is the predict seconds) and the worker's own
peak RSS. Three rounds are timed:

- ``cold``: fresh workers, empty cache directory: each worker featurizes its chunk (the
  workers share the first-time featurization) and stores those rows;
- ``warm_memory``: the same workers again (what every retrain after the first costs): the
  features are in the workers' memory, so only prediction is left;
- ``warm_disk``: fresh workers on the filled cache directory (a resumed run): the features
  are read from the rows the cold round stored.

Target for training (timing only, any deterministic value would do): RDKit's Crippen
``MolLogP`` of ``n_train`` molecules of ``examples/moldesign/qm9-1000.smi`` drawn without
replacement with ``numpy.random.default_rng(seed)``.

Seconds: ``featurize_s`` and ``predict_s`` are measured inside the workers (the largest over
the workers, which run at the same time); ``wall_s`` is from sending the inference tasks to
holding every result in this process, so it includes moving the space and the predictions
between processes (and, in ``warm_disk``, the fresh workers' start-up: ``overhead_s`` is
``wall_s`` less the longest task). Peak RSS is ``resource.getrusage(...).ru_maxrss`` of each
process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QM9 = ROOT / "examples" / "moldesign" / "qm9-1000.smi"
TRAIN, INFER = "train", "infer"


def read_space(path: str | os.PathLike[str]) -> list[str]:
    """SMILES of a ``.smi`` or ``.smi.gz`` file as ``Spec.load_space`` reads them."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    seen: dict[str, None] = {}
    with opener(path, "rt") as handle:
        for line in handle:
            words = line.split()
            if words:
                seen.setdefault(words[0], None)
    return list(seen)


def training_set(n_train: int, seed: int) -> tuple[list[str], list[float]]:
    """``n_train`` QM9 molecules (seeded draw, file order) and their Crippen MolLogP."""
    from rdkit import Chem
    from rdkit.Chem import Crippen

    qm9 = read_space(QM9)
    if not 1 <= n_train <= len(qm9):
        raise ValueError(f"n_train must be between 1 and {len(qm9)}, got {n_train}")
    rows = np.sort(np.random.default_rng(seed).choice(len(qm9), n_train, replace=False))
    smiles = [qm9[i] for i in rows]
    return smiles, [float(Crippen.MolLogP(Chem.MolFromSmiles(s))) for s in smiles]


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_infer_space(scorer, smiles: list[str], indices: list[int], cache_dir: str):
    """The app's ``infer_space`` task, with the time its features took (runs on a worker)."""
    from steersman.apps.moldesign import thinkers

    name = f"{cache_dir}:{scorer.featurizer.name}:{len(smiles)}"
    held = thinkers._features.get(name)
    before = held.spent if held is not None else 0.0
    start = time.perf_counter()
    mean, std = thinkers.infer_space(scorer, smiles, indices, cache_dir)
    task = time.perf_counter() - start
    features = thinkers._features[name]
    if held is not None:
        source = "memory" if features.spent == before else "memory+computed"
    else:
        source = features.source
    spent = features.spent - before
    info = {
        "pid": os.getpid(),
        "rows": len(indices),
        "features_from": source,
        "featurize_s": spent,
        "predict_s": task - spent,
        "task_s": task,
        "peak_rss_mb": _peak_rss_mb(),
    }
    return mean, std, info


def _infer_round(queues, scorer, space: list[str], workers: int, cache_dir: str) -> dict:
    """One inference over the whole space, chunked as ``SingleStepThinker`` chunks it."""
    candidates = np.arange(len(space))
    chunks = [c for c in np.array_split(candidates, workers) if len(c)]
    start = time.perf_counter()
    for number, chunk in enumerate(chunks):
        queues.send_inputs(
            scorer,
            space,
            chunk.tolist(),
            cache_dir,
            method=INFER,
            topic="ml",
            task_info={"chunk": number},
        )
    results = {}
    for _ in chunks:
        result = queues.get_result(topic="ml")
        if not result.success:
            raise RuntimeError(f"inference failed: {result.failure}")
        results[result.task_info["chunk"]] = result
    wall = time.perf_counter() - start
    values = [results[i].value for i in range(len(chunks))]
    mean = np.concatenate([v[0] for v in values])
    std = np.concatenate([v[1] for v in values])
    tasks = [v[2] for v in values]
    for info, number in zip(tasks, range(len(chunks)), strict=True):
        info["inputs_mb"] = results[number].serialization.inputs_bytes / 2**20
    return {
        "featurize_s": max(t["featurize_s"] for t in tasks),
        "predict_s": max(t["predict_s"] for t in tasks),
        "wall_s": wall,
        "overhead_s": wall - max(t["task_s"] for t in tasks),
        "features_from": sorted({t["features_from"] for t in tasks}),
        "worker_pids": sorted({t["pid"] for t in tasks}),
        "tasks": tasks,
        "mean": mean,
        "std": std,
    }


def time_inference(
    space_path: str | os.PathLike[str],
    n_train: int = 200,
    seed: int = 0,
    *,
    workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
    template: Any = None,
) -> dict[str, Any]:
    """Train ``template`` (default a TanimotoGP) on ``n_train`` QM9 molecules (target:
    Crippen MolLogP) and score every molecule of ``space_path`` through the app's ML pool
    of ``workers`` processes.

    Returns ``molecules``, ``read_s``, ``train_s``, per-round dicts ``cold``,
    ``warm_memory`` and ``warm_disk`` (``featurize_s``, ``predict_s``, ``wall_s``, per-task
    details), the headline ``featurize_s`` / ``predict_s`` / ``total_s`` of the cold round and
    ``rescore_s`` of the warm-memory round, peak RSS in MiB of this process and of the
    workers, and sanity checks on the predictions. ``cache_dir`` (default: a temporary
    directory) must not already hold features of this space, or the cold round is not cold.
    """
    import cloudpickle

    from steersman import Queues, WorkerPool
    from steersman.apps.moldesign import scorers
    from steersman.apps.moldesign.thinkers import train_model

    module = sys.modules[__name__]
    if __name__ != "__main__":
        # Worker processes cannot import this file by name; ship its functions by value.
        cloudpickle.register_pickle_by_value(module)

    started = time.perf_counter()
    space = read_space(space_path)
    read_s = time.perf_counter() - started
    smiles, targets = training_set(n_train, seed)
    template = template if template is not None else scorers.TanimotoGP()

    with tempfile.TemporaryDirectory(prefix="moldesign-features-") as scratch:
        cache = str(cache_dir if cache_dir is not None else scratch)
        if scorers.FeatureCache(cache).path(template.featurizer, space) is not None:
            raise ValueError(f"{cache} already holds features of this space; use another")
        queues = Queues(methods={TRAIN: "ml", INFER: "ml"}, topics=["ml"])
        methods = {TRAIN: train_model, INFER: timed_infer_space}
        rounds: dict[str, dict] = {}
        try:
            pool = WorkerPool(queues, methods, workers=workers).start()
            try:
                queues.send_inputs(template, smiles, targets, method=TRAIN, topic="ml")
                trained = queues.get_result(topic="ml")
                if not trained.success:
                    raise RuntimeError(f"training failed: {trained.failure}")
                train_s = trained.timestamps.finished - trained.timestamps.started
                scorer = trained.value
                rounds["cold"] = _infer_round(queues, scorer, space, workers, cache)
                rounds["warm_memory"] = _infer_round(queues, scorer, space, workers, cache)
            finally:
                pool.stop()
            pool = WorkerPool(queues, methods, workers=workers).start()
            try:
                rounds["warm_disk"] = _infer_round(queues, scorer, space, workers, cache)
            finally:
                pool.stop()
        finally:
            queues.close()
            if __name__ != "__main__":
                cloudpickle.unregister_pickle_by_value(module)

    cold, warm, disk = rounds["cold"], rounds["warm_memory"], rounds["warm_disk"]
    same = bool(
        np.array_equal(cold["mean"], warm["mean"])
        and np.array_equal(cold["mean"], disk["mean"])
        and np.array_equal(cold["std"], disk["std"])
    )
    checks = {
        "predictions": len(cold["mean"]),
        "finite": bool(np.isfinite(cold["mean"]).all() and np.isfinite(cold["std"]).all()),
        "identical_across_rounds": same,
        "mean_range": [float(cold["mean"].min()), float(cold["mean"].max())],
        "std_range": [float(cold["std"].min()), float(cold["std"].max())],
    }
    for details in rounds.values():
        del details["mean"], details["std"]
    worker_rss = max(t["peak_rss_mb"] for r in rounds.values() for t in r["tasks"])
    return {
        "molecules": len(space),
        "workers": workers,
        "n_train": n_train,
        "seed": seed,
        "target": "Crippen MolLogP",
        "scorer": repr(template),
        "read_s": read_s,
        "train_s": train_s,
        "featurize_s": cold["featurize_s"],
        "predict_s": cold["predict_s"],
        "total_s": cold["wall_s"],
        "rescore_s": warm["wall_s"],
        "rescore_from_disk_s": disk["wall_s"],
        "peak_rss_mb_main": _peak_rss_mb(),
        "peak_rss_mb_worker": worker_rss,
        "rounds": rounds,
        "checks": checks,
    }


def _print(report: dict[str, Any]) -> None:
    print(
        f"space: {report['molecules']} molecules (read in {report['read_s']:.2f} s); "
        f"{report['workers']} ML worker process(es); scorer {report['scorer']} trained on "
        f"{report['n_train']} QM9 molecules ({report['target']}) in {report['train_s']:.2f} s"
    )
    labels = {
        "cold": "first-time (featurize + predict)",
        "warm_memory": "re-score, features in memory",
        "warm_disk": "re-score, features from disk",
    }
    for key, label in labels.items():
        r = report["rounds"][key]
        print(
            f"{label:34s} featurize {r['featurize_s']:7.2f} s  predict {r['predict_s']:6.2f} s"
            f"  total {r['wall_s']:7.2f} s  (outside the tasks {r['overhead_s']:.2f} s;"
            f" features from {', '.join(r['features_from'])})"
        )
        for t in r["tasks"]:
            print(
                f"    pid {t['pid']}: {t['rows']} rows, featurize {t['featurize_s']:.2f} s, "
                f"predict {t['predict_s']:.2f} s, inputs {t['inputs_mb']:.1f} MiB, "
                f"peak RSS {t['peak_rss_mb']:.0f} MiB"
            )
    print(
        f"peak RSS: main {report['peak_rss_mb_main']:.0f} MiB, largest worker "
        f"{report['peak_rss_mb_worker']:.0f} MiB"
    )
    print(f"checks: {report['checks']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", type=Path, help="search space, .smi or .smi.gz")
    parser.add_argument("--n-train", type=int, default=200, help="QM9 molecules to train on")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training draw")
    parser.add_argument("--workers", type=int, default=2, help="ML worker processes")
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (empty)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = time_inference(
        args.space, args.n_train, args.seed, workers=args.workers, cache_dir=args.cache_dir
    )
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
