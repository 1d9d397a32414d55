"""Thinkers of a molecular-design campaign: the policies that decide what to simulate next.

- :class:`BruteForceThinker` simulates the search space in order, as fast as the workers go;
- :class:`SingleStepThinker` never leaves a simulation worker idle, retrains the scorer on
  the ML workers as soon as a recipe completes, re-runs inference as soon as training
  finishes, and reorders what runs next by the selector (one objective, or two for a
  Pareto or hypervolume selector);
- :class:`MultiFidelityThinker` screens every pick with a cheap recipe first and promotes
  the best screened to the objective's recipe.

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


def _option_names(cls: type) -> set[str] | None:
    """The keyword options a thinker class takes: those of its ``__init__`` and, where that
    passes ``**options`` on, of its bases'. None when a class of the user's takes
    ``**options`` itself: only it knows which it reads."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = list(inspect.signature(init).parameters.values())
        names |= {
            p.name
            for p in parameters[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in ("queues", "spec", "space", "store", "progress")
        }
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
        if not klass.__module__.startswith("steersman."):
            return None
        if klass is MoleculeThinker:
            break
    return names


# --------------------------------------------------------------------------- ML tasks
def train_model(scorer, smiles: list[str], targets: list[float]):
    """Fit the scorer on measured molecules (a task for an ML worker)."""
    from steersman.apps.moldesign import scorers

    return scorers.train(scorer, smiles, np.asarray(targets, dtype=float))


_features: dict[str, Any] = {}


def infer_space(scorer, smiles: list[str], indices: list[int], cache_dir: str):
    """Predict mean and std for ``smiles[indices]`` (a task for an ML worker).

    The features of the search space are computed once per run directory, each row when a
    worker first needs it, and kept on disk and in this worker's memory, so each inference
    after the first only predicts.
    """
    from steersman.apps.moldesign import scorers

    name = f"{cache_dir}:{scorer.featurizer.name}:{len(smiles)}"
    features = _features.get(name)
    if features is None:
        _features.clear()
        features = _features[name] = scorers.FeatureCache(cache_dir).rows(scorer.featurizer, smiles)
    # Only the rows of this chunk are computed: the ML workers share the first featurizing.
    rows = features.get(indices)
    mean, std = scorers.infer_features(scorer, rows)
    mean, std = np.array(mean, dtype=float), np.array(std, dtype=float)
    # A SMILES RDKit cannot read featurizes to zeros; predict nothing for it rather than the
    # prior's large doubt, which optimistic selectors would chase into certain failures.
    unreadable = ~rows.any(axis=1)
    mean[unreadable] = np.nan
    std[unreadable] = np.nan
    return mean, std


# --------------------------------------------------------------------------- thinkers
class MoleculeThinker(BaseThinker):
    """What every campaign thinker shares: the search space, the database, the budget, the
    bookkeeping of tasks, and the slots of the simulation workers."""

    def __init__(
        self,
        queues,
        spec,
        space: list[str],
        store: MoleculeStore,
        progress=None,
        queue_ahead: int = 1,
    ):
        # Slots for one simulation per worker, plus ``queue_ahead`` waiting in the queue, so
        # a worker that finishes starts its next molecule without waiting for the thinker.
        MoleculeThinker._check_values(spec, {"queue_ahead": queue_ahead})
        n_sim = spec.workers.simulation + queue_ahead
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
        self.n_measured = len(self.training_data()[1])
        """The training set's size."""
        self.best = max(MoleculeThinker.training_data(self)[1], default=None)
        """The best measured value of the objective."""
        self.rng = np.random.default_rng(spec.starter.seed)
        self.queue: list[int] = self.initial_order()

    @classmethod
    def check_options(cls, spec, options: dict[str, Any]) -> None:
        """Raise :class:`SpecError` naming the option if ``options`` (a spec's
        ``thinker_options``) would not make this thinker: an unknown name, or a bad value.
        Called when a spec is validated, so ``--dry-run`` catches it before anything runs;
        a subclass with options of its own checks them in :meth:`_check_values`."""
        from steersman.apps.moldesign.spec import SpecError

        known = _option_names(cls)
        unknown = sorted(set(options) - known) if known is not None else []
        if unknown:
            raise SpecError(
                f"spec.thinker_options: {cls.__name__} has no option {unknown[0]!r}; "
                f"expected some of: {', '.join(sorted(known)) or 'none'}"
            )
        cls._check_values(spec, options)

    @classmethod
    def _check_values(cls, spec, options: dict[str, Any]) -> None:
        from steersman.apps.moldesign.spec import SpecError

        queue_ahead = options.get("queue_ahead", 1)
        if isinstance(queue_ahead, bool) or not isinstance(queue_ahead, int) or queue_ahead < 0:
            raise SpecError(
                f"spec.thinker_options.queue_ahead: expected 0 or more, got {queue_ahead!r}"
            )
        for name in ("min_training", "batch", "inference_chunks", "min_promoted"):
            value = options.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise SpecError(
                    f"spec.thinker_options.{name}: expected a positive integer, got {value!r}"
                )

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
                # Budget spent: keep the slot; the run ends with the last result, or now if
                # nothing is running (a resumed run that had already spent it).
                if self.n_done >= self.n_started:
                    self.done.set()
                return
        index = self.next_index()
        if index is None:
            self.logger.info("the search space is exhausted")
            with self.lock:
                if self.n_done >= self.n_started:
                    self.done.set()
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

    def keep(self, result: Result) -> MoleculeRecord | None:
        """Log a simulation's task and store its record (None if the task itself failed)."""
        self.log_task(result)
        if not result.success:
            index = result.task_info["index"]
            self.logger.warning("simulation of %s failed: %s", self.space[index], result.failure)
            return None
        record: MoleculeRecord = result.value
        self.store.update(record)
        self.by_smiles[record.smiles] = record
        if record.failures:
            self.logger.info("%s: %s", record.smiles, "; ".join(record.failures.values()))
        return record

    @result_processor(topic=SIMULATE)
    def store_simulation(self, result: Result) -> None:
        self.rec.release(SIMULATE, 1)
        index = result.task_info["index"]
        record = self.keep(result)
        value = None if record is None else record.properties.get(self.objective)
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

    def training_data(self, name: str | None = None) -> tuple[list[str], list[float]]:
        """Molecules with a finite value of recipe ``name`` (default: the objective)."""
        name = name or self.objective
        smiles, values = [], []
        for record in self.store:
            value = record.properties.get(name)
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
    the search space (default: one per ML worker), ``queue_ahead`` simulations kept waiting
    beyond one per worker (default 1), so no worker idles while the thinker reacts, and
    ``believer`` (default True) to train on running simulations at their predicted values
    (see :meth:`believed`).
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
        queue_ahead: int = 1,
        believer: bool = True,
    ):
        super().__init__(queues, spec, space, store, progress, queue_ahead)
        self.believer = believer
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
        self.objectives = [r.name for r in spec.recipes[: spec.selector.n_objectives]]
        """The recipes the selector ranks by: the first, or the first two."""

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
        """Train on everything measured, score the rest, reorder what runs next.

        With a two-objective selector, one model per objective (the first two recipes) is
        trained and run side by side; the selector sees means and stds of shape (N, 2).
        """
        while self.retrain.is_set() and not self.done.is_set():
            self.retrain.clear()
            started = time.time()
            datasets = [self.training_data(name) for name in self.objectives]
            if any(not values for _, values in datasets):
                return  # an objective has no measured value yet
            for k, (smiles, values) in enumerate(self.believed(datasets)):
                self.queues.send_inputs(
                    self.spec.scorer,
                    smiles,
                    values,
                    method=TRAIN,
                    topic="ml",
                    task_info={"objective": k},
                )
            # Every result of a round is read before any failure ends it, so none is left
            # for the next round to mistake for its own.
            models = {}
            failed = None
            for _ in datasets:
                trained = self.queues.get_result(topic="ml")
                self.log_task(trained)
                if not trained.success:
                    failed = trained.failure
                models[trained.task_info["objective"]] = trained.value
            if failed is not None:
                self.logger.warning("training failed: %s", failed)
                return
            with self.lock:
                candidates = [i for i in range(len(self.space)) if i not in self.started]
            if not candidates:
                return
            chunks = [
                c for c in np.array_split(np.asarray(candidates), self.inference_chunks) if len(c)
            ]
            for k, model in models.items():
                for number, chunk in enumerate(chunks):
                    self.queues.send_inputs(
                        model,
                        self.space,
                        chunk.tolist(),
                        self.cache_dir,
                        method=INFER,
                        topic="ml",
                        task_info={"objective": k, "chunk": number},
                    )
            predicted: dict[tuple[int, int], tuple] = {}
            for _ in range(len(models) * len(chunks)):
                inferred = self.queues.get_result(topic="ml")
                self.log_task(inferred)
                if not inferred.success:
                    failed = inferred.failure
                info = inferred.task_info
                predicted[info["objective"], info["chunk"]] = inferred.value
            if failed is not None:
                self.logger.warning("inference failed: %s", failed)
                return
            self.rank(chunks, predicted, datasets, started)

    def believed(self, datasets: list[tuple[list[str], list[float]]]):
        """The training sets, with each simulation still running counted at the value the
        model predicted for it (the "kriging believer"): the next ranking then sees less
        doubt around molecules already being simulated and spreads its picks, instead of
        sending near copies of them while their results are out."""
        if not self.believer or len(self.objectives) != 1:
            return datasets
        with self.lock:
            running = [
                (self.space[i], mean)
                for i, (mean, _std, _size) in self.predicted.items()
                if i not in self.finished
            ]
        smiles, values = datasets[0]
        return [(smiles + [s for s, _ in running], values + [m for _, m in running])]

    def fingerprints(self, indices: list[int]) -> np.ndarray:
        """Morgan fingerprints of these molecules, for selectors that keep picks diverse
        (computed in this process once per molecule)."""
        from steersman.apps.moldesign.scorers import MorganFingerprints

        missing = [i for i in indices if i not in self._fingerprints]
        if missing:
            rows = MorganFingerprints()([self.space[i] for i in missing])
            self._fingerprints.update(zip(missing, rows, strict=True))
        return np.stack([self._fingerprints[i] for i in indices])

    def observed(self) -> np.ndarray:
        """Measured values of every objective, one row per molecule that has them all."""
        rows = []
        for record in self.store:
            row = [record.properties.get(name) for name in self.objectives]
            if all(v is not None and np.isfinite(v) for v in row):
                rows.append(row)
        return np.asarray(rows, dtype=float).reshape(-1, len(self.objectives))

    def rank(self, chunks, predicted, datasets, started) -> None:
        """Let the selector order the molecules not yet started by their predictions."""
        k = len(self.objectives)
        indices = np.concatenate(chunks)
        mean = np.column_stack(
            [np.concatenate([predicted[j, n][0] for n in range(len(chunks))]) for j in range(k)]
        )
        std = np.column_stack(
            [np.concatenate([predicted[j, n][1] for n in range(len(chunks))]) for j in range(k)]
        )
        with self.lock:
            keep = np.array([int(i) not in self.started for i in indices], dtype=bool)
        # Molecules with no prediction (unreadable SMILES) are not ranked: they keep their
        # place behind the ranked picks.
        keep &= np.isfinite(mean).all(axis=1) & np.isfinite(std).all(axis=1)
        if not keep.any():
            return
        pool = [int(i) for i in indices[keep]]
        mean, std = mean[keep], std[keep]
        selector = self.spec.selector
        features = None
        if isinstance(selector, DiversityGreedySelector):
            features = self.fingerprints(pool)
        values = datasets[0][1]
        observed = self.observed() if k > 1 else np.asarray(values, dtype=float)
        picks = selector.select(
            mean[:, 0] if k == 1 else mean,
            std[:, 0] if k == 1 else std,
            min(len(pool), self.batch),
            best=max(values),
            features=features,
            observed=observed,
            rng=self.rng,
        )
        chosen = [pool[int(p)] for p in picks]
        with self.lock:
            rest = [i for i in self.queue if i not in set(chosen)]
            self.queue = chosen + rest
            # The first objective's predictions, kept to compare with what is measured.
            self.predictions = {
                i: (float(m), float(s)) for i, m, s in zip(pool, mean[:, 0], std[:, 0], strict=True)
            }
            self.predictions_training_size = len(values)
        self.note(
            "ranked",
            training_size=len(values),
            candidates=len(pool),
            seconds=time.time() - started,
        )


class MultiFidelityThinker(SingleStepThinker):
    """Active learning in two levels: every molecule is first computed with a ``cheap``
    recipe; those whose cheap value ranks in the best ``promote`` fraction of the cheap
    values measured so far go on to the objective (``recipes[0]``), which reuses the cheap
    step's geometries. Promotions run before new screenings.

    The scorer learns from both levels: a molecule measured only at the cheap level counts
    with its cheap value plus the mean gap between the levels over the molecules that have
    both, so every screening teaches the model. Every simulation started, cheap or not,
    counts against ``num_to_run``.

    Options (``thinker_options``): ``cheap`` (a Recipe, required, e.g.
    ``IonizationPotential(vertical=True)`` before the adiabatic one), ``promote`` (default
    0.25), ``min_promoted`` molecules taken to the objective whatever their rank before the
    rule applies (default: the starter's count), and those of :class:`SingleStepThinker`.
    """

    def __init__(
        self,
        queues,
        spec,
        space,
        store,
        progress=None,
        cheap=None,
        promote: float = 0.25,
        min_promoted: int | None = None,
        **options,
    ):
        MultiFidelityThinker._check_values(spec, {"cheap": cheap, "promote": promote})
        self.cheap = cheap
        self.promote = promote
        self.min_promoted = min_promoted or spec.starter.count
        self.promotions: list[int] = []
        """Molecules screened well enough to go on to the objective, best first."""
        self.n_promoted = sum(1 for r in store if r.done(spec.recipes[0].name))
        """Molecules taken (or to be taken) to the objective's recipe."""
        super().__init__(queues, spec, space, store, progress, **options)
        self.running = 0
        self.parked = 0
        """Simulation slots held while nothing could be sent."""
        # Counting simulations, not molecules: a screened and promoted molecule is two.
        self.n_started = self.n_done = sum(
            (self.cheap.name in r.properties or self.cheap.name in r.failures)
            + r.done(self.objective)
            for r in store
        )
        # A resumed run decides again on molecules screened but not taken further.
        for index in sorted(self.started):
            record = self.by_smiles.get(space[index])
            if record is not None and not record.done(self.objective) and self._promotable(record):
                self.promotions.append(index)
                self.n_promoted += 1

    @classmethod
    def _check_values(cls, spec, options: dict[str, Any]) -> None:
        from steersman.apps.moldesign.recipes import Recipe
        from steersman.apps.moldesign.spec import SpecError

        super()._check_values(spec, options)
        cheap, promote = options.get("cheap"), options.get("promote", 0.25)
        if not isinstance(cheap, Recipe):
            raise SpecError(
                "spec.thinker_options.cheap: expected the cheap Recipe to screen with "
                f"(e.g. IonizationPotential(vertical=True)), got {cheap!r}"
            )
        if cheap.name == spec.recipes[0].name:
            raise SpecError("spec.thinker_options.cheap: expected a recipe other than recipes[0]")
        if (
            isinstance(promote, bool)
            or not isinstance(promote, int | float)
            or not (0 < promote <= 1)
        ):
            raise SpecError(
                f"spec.thinker_options.promote: expected a fraction in (0, 1], got {promote!r}"
            )
        if spec.selector.n_objectives != 1:
            raise SpecError("spec.selector: MultiFidelityThinker ranks by one objective")

    def _finished(self, record: MoleculeRecord | None) -> bool:
        """A molecule is out of the queue once screened (promotion is decided apart)."""
        return record is not None and (record.done(self.objective) or record.done(self.cheap.name))

    def cheap_values(self) -> list[float]:
        return self.training_data(self.cheap.name)[1]

    def _promotable(self, record: MoleculeRecord) -> bool:
        value = record.properties.get(self.cheap.name)
        if value is None or not np.isfinite(value):
            return False
        if self.n_promoted < self.min_promoted:
            return True
        values = self.cheap_values()
        return value >= np.quantile(values, 1 - self.promote)

    def training_data(self, name: str | None = None) -> tuple[list[str], list[float]]:
        """For the objective: measured values, and for molecules only screened so far their
        cheap value shifted by the mean gap between the levels."""
        name = name or self.objective
        if name != self.objective:
            return super().training_data(name)
        both, smiles, values, screened = [], [], [], []
        for record in self.store:
            full = record.properties.get(self.objective)
            cheap = record.properties.get(self.cheap.name)
            if full is not None and np.isfinite(full):
                smiles.append(record.smiles)
                values.append(full)
                if cheap is not None and np.isfinite(cheap):
                    both.append(full - cheap)
            elif cheap is not None and np.isfinite(cheap) and not record.done(self.objective):
                screened.append((record.smiles, cheap))
        if both:
            gap = float(np.mean(both))
            smiles += [s for s, _ in screened]
            values += [v + gap for _, v in screened]
        return smiles, values

    @task_submitter(task_type=SIMULATE)
    def submit_simulation(self) -> None:
        """Send a promotion if one waits, else screen the next molecule; with neither (all
        screened, promotions may still come) keep the slot until a result frees one."""
        # Whatever is sent is reserved (budget and running count) in the same locked step
        # that chose it, so the result processor, which may send promotions too, never
        # sees a half-made decision.
        with self.lock:
            if self.n_started >= self.spec.num_to_run:
                if self.running == 0:
                    self.done.set()  # a resumed run that had already spent its budget
                return  # budget spent: the run ends with the last result
            promoted = self._reserve_promotion()
        if promoted is not None:
            self._send(promoted, "full")
            return
        index = self.next_index()
        with self.lock:
            if index is None:
                promoted = self._reserve_promotion()  # one may have come meanwhile
                if promoted is None:
                    self.parked += 1
                    if self.running == 0:
                        self.done.set()  # nothing left to screen or promote
                    return
            else:
                self.started.add(index)
                self.n_started += 1
                self.running += 1
        if promoted is not None:
            self._send(promoted, "full")
            return
        self.on_submit(index)
        self._send(index, "cheap")

    def _reserve_promotion(self) -> int | None:
        """Pop the best waiting promotion and count it as sent (call with the lock held)."""
        if not self.promotions or self.n_started >= self.spec.num_to_run:
            return None
        self.n_started += 1
        self.running += 1
        return self.promotions.pop(0)

    def _send(self, index: int, level: str) -> None:
        """Send one simulation already counted by :meth:`_reserve_promotion` or the
        submitter."""
        smiles = self.space[index]
        try:
            key = molecule_key(smiles)
        except ValueError:
            key = smiles  # recorded as failed by the worker, with the reason
        self.queues.send_inputs(
            smiles,
            key,
            [self.cheap] if level == "cheap" else self.spec.recipes,
            self.by_smiles.get(smiles),
            method=SIMULATE,
            topic=SIMULATE,
            task_info={"index": index, "smiles": smiles, "level": level},
        )

    @result_processor(topic=SIMULATE)
    def store_simulation(self, result: Result) -> None:
        index = result.task_info["index"]
        level = result.task_info.get("level", "full")
        value = None
        record = self.keep(result)
        # Decide the promotion first, then count the result done and queue the promotion in
        # one step: the submitter never sees nothing running and nothing waiting in between.
        promote = level == "cheap" and record is not None and self._promotable(record)
        with self.lock:
            self.finished.add(index)
            self.n_done += 1
            self.running -= 1
            n_done = self.n_done
            if promote:
                # Best screened first: a promotion waits behind better ones only.
                self.promotions.append(index)
                self.n_promoted += 1
                self.promotions.sort(
                    key=lambda i: -self.by_smiles[self.space[i]].properties[self.cheap.name]
                )
        if level == "full" and record is not None:
            value = record.properties.get(self.objective)
        if value is not None and np.isfinite(value):
            with self.lock:
                self.best = value if self.best is None else max(self.best, value)
        if level == "full":
            self.on_simulation(index, value)  # a failed promotion too: it is not running
        n_training = len(self.training_data()[1])
        with self.lock:
            self.n_measured = n_training
        if n_training >= self.min_training:
            self.retrain.set()
        # A slot kept while nothing could be sent takes a promotion now.
        while True:
            with self.lock:
                promoted = self._reserve_promotion() if self.parked else None
                if promoted is None:
                    break
                self.parked -= 1
            self._send(promoted, "full")
        self.rec.release(SIMULATE, 1)
        if self.progress is not None:
            self.progress(n_done, self.best)
        with self.lock:
            finished = self.running == 0 and (
                n_done >= self.spec.num_to_run
                or (not self.promotions and len(self.started) == len(self.space))
            )
        if finished:
            self.done.set()
