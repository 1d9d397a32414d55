"""Thinkers of a molecular-design campaign: the policies that decide what to simulate next.

- :class:`BruteForceThinker` simulates the search space in order, as fast as the workers go;
- :class:`SingleStepThinker` never leaves a simulation worker idle, retrains the scorer on
  the ML workers as soon as a recipe completes, re-runs inference as soon as training
  finishes, and reorders what runs next by the selector.

Every simulation's record goes to the database the moment its result arrives, and every
task's timings to ``tasks.jsonl``, so a stopped run resumes where it was.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from steersman import (
    BaseThinker,
    ResourceCounter,
    Result,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)
from steersman.apps.moldesign.chemistry import molecule_key
from steersman.apps.moldesign.selectors import DiversityGreedySelector
from steersman.apps.moldesign.store import MoleculeRecord, MoleculeStore

SIMULATE, TRAIN, INFER = "simulate", "train", "infer"


# --------------------------------------------------------------------------- ML tasks
def train_model(scorer, smiles: list[str], targets: list[float]):
    """Fit the scorer on measured molecules (a task for an ML worker)."""
    from steersman.apps.moldesign import scorers

    return scorers.train(scorer, smiles, np.asarray(targets, dtype=float))


_features: dict[str, np.ndarray] = {}


def infer_space(scorer, smiles: list[str], indices: list[int], cache_dir: str):
    """Predict mean and std for ``smiles[indices]`` (a task for an ML worker).

    The features of the whole search space are computed once per run directory and kept
    on disk and in this worker's memory, so each inference only predicts.
    """
    from steersman.apps.moldesign import scorers

    name = f"{cache_dir}:{scorer.featurizer.name}:{len(smiles)}"
    features = _features.get(name)
    if features is None:
        features = scorers.FeatureCache(cache_dir).get(scorer.featurizer, smiles)
        _features.clear()
        _features[name] = features
    mean, std = scorers.infer_features(scorer, features[np.asarray(indices, dtype=int)])
    return np.asarray(mean), np.asarray(std)


# --------------------------------------------------------------------------- thinkers
class MoleculeThinker(BaseThinker):
    """What every campaign thinker shares: the search space, the database, the budget, the
    bookkeeping of tasks, and the slots of the simulation workers."""

    def __init__(self, queues, spec, space: list[str], store: MoleculeStore, progress=None):
        n_sim = spec.workers.simulation
        super().__init__(queues, ResourceCounter(n_sim, [SIMULATE]))
        self.rec.reallocate(None, SIMULATE, n_sim)
        self.spec = spec
        self.space = space
        self.store = store
        self.progress = progress
        self.objective = spec.recipes[0].name
        self.lock = threading.Lock()
        self.run_dir = Path(spec.run_dir)
        self.tasks_log = (self.run_dir / "tasks.jsonl").open("a")
        self.events_log = (self.run_dir / "events.jsonl").open("a")
        self.by_smiles = {record.smiles: record for record in store}
        # What earlier runs in this run_dir already started (done or failed for good).
        self.finished: set[int] = {
            i for i, s in enumerate(space) if self._finished(self.by_smiles.get(s))
        }
        self.started: set[int] = set(self.finished)
        self.n_started = len(self.finished)
        self.n_done = len(self.finished)
        measured = self.training_data()[1]
        self.n_measured = len(measured)
        """Molecules with a finite value of the objective: the training set's size."""
        self.best = max(measured) if measured else None
        self.rng = np.random.default_rng(spec.starter.seed)
        self.queue: list[int] = self.initial_order()

    def _finished(self, record: MoleculeRecord | None) -> bool:
        return record is not None and all(record.done(r.name) for r in self.spec.recipes)

    def initial_order(self) -> list[int]:
        """The order molecules are taken in before any model exists."""
        order = np.arange(len(self.space))
        if self.spec.starter.how == "random":
            order = self.rng.permutation(len(self.space))
        return [int(i) for i in order if i not in self.started]

    def note(self, kind: str, **fields: Any) -> None:
        """Append one event (a retrain, an inference, a best-so-far) to ``events.jsonl``."""
        self.events_log.write(json.dumps({"event": kind, "time": time.time(), **fields}) + "\n")
        self.events_log.flush()

    # ------------------------------------------------------------------ simulations
    def next_index(self) -> int | None:
        with self.lock:
            while self.queue:
                index = self.queue.pop(0)
                if index not in self.started:
                    return index
            return None

    @task_submitter(task_type=SIMULATE)
    def submit_simulation(self) -> None:
        with self.lock:
            if self.n_started >= self.spec.num_to_run:
                return  # budget spent: keep the slot; the run ends with the last result
        index = self.next_index()
        if index is None:
            self.logger.info("the search space is exhausted")
            return
        smiles = self.space[index]
        try:
            key = molecule_key(smiles)
        except ValueError:
            key = smiles  # recorded as failed by the worker, with the reason
        with self.lock:
            self.started.add(index)
            self.n_started += 1
        self.on_submit(index)
        self.queues.send_inputs(
            smiles,
            key,
            self.spec.recipes,
            self.by_smiles.get(smiles),
            method=SIMULATE,
            topic=SIMULATE,
            task_info={"index": index, "smiles": smiles},
        )

    def log_task(self, result: Result) -> None:
        stamps = result.timestamps
        row = {
            "task_id": result.task_id,
            "method": result.method,
            "success": result.success,
            "attempt": result.attempt,
            "worker": result.worker.worker_id if result.worker else None,
            "created": stamps.created,
            "started": stamps.started,
            "finished": stamps.finished,
            "received": stamps.result_received,
            "failure": result.failure.message if result.failure else None,
            **result.task_info,
        }
        self.tasks_log.write(json.dumps(row) + "\n")
        self.tasks_log.flush()

    @result_processor(topic=SIMULATE)
    def store_simulation(self, result: Result) -> None:
        self.rec.release(SIMULATE, 1)
        self.log_task(result)
        index = result.task_info["index"]
        if result.success:
            record: MoleculeRecord = result.value
            self.store.update(record)
            self.by_smiles[record.smiles] = record
            value = record.properties.get(self.objective)
            if record.failures:
                self.logger.info("%s: %s", record.smiles, "; ".join(record.failures.values()))
        else:
            value = None
            self.logger.warning("simulation of %s failed: %s", self.space[index], result.failure)
        with self.lock:
            self.finished.add(index)
            self.n_done += 1
            n_done = self.n_done
        if value is not None and np.isfinite(value):
            with self.lock:
                self.n_measured += 1
                self.best = value if self.best is None else max(self.best, value)
        self.on_simulation(index, value)
        if self.progress is not None:
            self.progress(n_done, self.best)
        if n_done >= self.spec.num_to_run or (
            len(self.finished) == len(self.space) and n_done >= self.n_started
        ):
            self.done.set()

    def on_submit(self, index: int) -> None:
        """Called as each simulation is sent."""

    def on_simulation(self, index: int, value: float | None) -> None:
        """Called after each simulation result is stored."""

    def training_data(self) -> tuple[list[str], list[float]]:
        smiles, values = [], []
        for record in self.store:
            value = record.properties.get(self.objective)
            if value is not None and np.isfinite(value):
                smiles.append(record.smiles)
                values.append(value)
        return smiles, values

    def close(self) -> None:
        self.tasks_log.close()
        self.events_log.close()


class BruteForceThinker(MoleculeThinker):
    """Simulate the search space in file order (or the starter's random order), no model."""

    def initial_order(self) -> list[int]:
        return [i for i in range(len(self.space)) if i not in self.started]


class SingleStepThinker(MoleculeThinker):
    """Active learning, one recipe step per molecule.

    Options (``thinker_options``): ``min_training`` results before the first model
    (default: the starter's count), ``batch`` how many picks the selector ranks each time
    (default 4 per simulation worker), ``inference_chunks`` how many inference tasks split
    the search space (default: one per ML worker).
    """

    def __init__(
        self,
        queues,
        spec,
        space,
        store,
        progress=None,
        min_training: int | None = None,
        batch: int | None = None,
        inference_chunks: int | None = None,
    ):
        super().__init__(queues, spec, space, store, progress)
        self.min_training = min_training or spec.starter.count
        self.batch = batch or 4 * spec.workers.simulation
        self.inference_chunks = inference_chunks or spec.workers.ml
        self.retrain = threading.Event()
        self.predictions: dict[int, tuple[float, float]] = {}
        """The latest model's mean and std for each molecule not yet started."""
        self.predictions_training_size = 0
        self.predicted: dict[int, tuple[float, float, int]] = {}
        """What the model said of each running simulation when it was sent."""
        self.model_errors: list[dict[str, float]] = []
        self.cache_dir = str(self.run_dir / "features")
        self._fingerprints: dict[int, np.ndarray] = {}

    def initial_order(self) -> list[int]:
        order = super().initial_order()
        return (
            order[: max(0, self.spec.starter.count - len(self.started))]
            + order[self.spec.starter.count :]
        )

    def on_submit(self, index: int) -> None:
        with self.lock:
            if index in self.predictions:
                mean, std = self.predictions[index]
                self.predicted[index] = (mean, std, self.predictions_training_size)

    def on_simulation(self, index: int, value: float | None) -> None:
        with self.lock:
            prediction = self.predicted.pop(index, None)
        if value is not None and prediction is not None:
            mean, std, size = prediction
            self.note(
                "prediction",
                index=index,
                predicted=mean,
                std=std,
                measured=value,
                training_size=size,
            )
        if self.n_measured >= self.min_training:
            self.retrain.set()

    @agent(startup=True)
    def start_models(self) -> None:
        if self.n_measured >= self.min_training:
            self.retrain.set()  # a resumed run starts with a model

    @event_responder(event_name="retrain")
    def retrain_and_rank(self) -> None:
        """Train on everything measured, score the rest, reorder what runs next."""
        while self.retrain.is_set() and not self.done.is_set():
            self.retrain.clear()
            smiles, values = self.training_data()
            started = time.time()
            self.queues.send_inputs(self.spec.scorer, smiles, values, method=TRAIN, topic="ml")
            trained = self.queues.get_result(topic="ml")
            self.log_task(trained)
            if not trained.success:
                self.logger.warning("training failed: %s", trained.failure)
                return
            with self.lock:
                candidates = [i for i in range(len(self.space)) if i not in self.started]
            if not candidates:
                return
            chunks = [
                c for c in np.array_split(np.asarray(candidates), self.inference_chunks) if len(c)
            ]
            for number, chunk in enumerate(chunks):
                self.queues.send_inputs(
                    trained.value,
                    self.space,
                    chunk.tolist(),
                    self.cache_dir,
                    method=INFER,
                    topic="ml",
                    task_info={"chunk": number},
                )
            predicted: dict[int, tuple] = {}
            for _ in chunks:
                inferred = self.queues.get_result(topic="ml")
                self.log_task(inferred)
                if not inferred.success:
                    self.logger.warning("inference failed: %s", inferred.failure)
                    return
                predicted[inferred.task_info["chunk"]] = inferred.value
            self.rank(chunks, predicted, values, started)

    def fingerprints(self, indices: list[int]) -> np.ndarray:
        """Morgan fingerprints of these molecules, for selectors that keep picks diverse
        (computed in this process once per molecule)."""
        from steersman.apps.moldesign.scorers import MorganFingerprints

        missing = [i for i in indices if i not in self._fingerprints]
        if missing:
            rows = MorganFingerprints()([self.space[i] for i in missing])
            self._fingerprints.update(zip(missing, rows, strict=True))
        return np.stack([self._fingerprints[i] for i in indices])

    def rank(self, chunks, predicted, values, started) -> None:
        """Let the selector order the molecules not yet started by their predictions."""
        by_index: dict[int, tuple[float, float]] = {}
        for number, chunk in enumerate(chunks):
            mean, std = predicted[number]
            for i, m, s in zip(chunk.tolist(), mean.tolist(), std.tolist(), strict=True):
                by_index[i] = (m, s)
        with self.lock:
            pool = [i for i in by_index if i not in self.started]
        if not pool:
            return
        mean = np.array([by_index[i][0] for i in pool])
        std = np.array([by_index[i][1] for i in pool])
        selector = self.spec.selector
        features = None
        if isinstance(selector, DiversityGreedySelector):
            features = self.fingerprints(pool)
        picks = selector.select(
            mean, std, min(len(pool), self.batch), best=max(values), features=features, rng=self.rng
        )
        chosen = [pool[int(p)] for p in picks]
        with self.lock:
            rest = [i for i in self.queue if i not in set(chosen)]
            self.queue = chosen + rest
            self.predictions = by_index
            self.predictions_training_size = len(values)
        self.note(
            "ranked",
            training_size=len(values),
            candidates=len(pool),
            seconds=time.time() - started,
        )
