"""The demo campaign: active learning finds the best of 20,000 candidates with ~1% of them run.

Each "simulation" is a real computation (a Monte Carlo estimate of a rugged function, tens of
milliseconds of CPU); a Gaussian-process surrogate, retrained on a separate ML worker as
results arrive, ranks the candidates by upper confidence bound and the thinker always runs
the best-ranked one next. Two simulation workers and one ML worker, all local processes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from steersman import (
    BaseThinker,
    Queues,
    ResourceCounter,
    Result,
    WorkerPool,
    agent,
    event_responder,
    result_processor,
    task_submitter,
)

DIMENSIONS = 4


def objective(x: np.ndarray) -> float:
    """The exact value that :func:`simulate` estimates (for the summary's ground truth)."""
    x = np.asarray(x, dtype=float)
    centre = np.linspace(0.2, 0.8, x.shape[-1])
    bowl = -np.sum((x - centre) ** 2, axis=-1) * 4
    ripples = 0.3 * np.prod(np.cos(6 * np.pi * (x - centre)), axis=-1)
    return bowl + ripples


def simulate(x: list[float], samples: int = 400_000, seed: int = 0) -> float:
    """An 'expensive' measurement: the objective averaged over noisy repeats of the input."""
    rng = np.random.default_rng(seed)
    noisy = np.asarray(x) + rng.normal(0.0, 0.002, size=(samples, len(x)))
    return float(objective(noisy).mean())


def train_and_rank(train_x: list[list[float]], train_y: list[float], pool_x: np.ndarray) -> list:
    """Fit a Gaussian process and return candidate indices, best upper confidence bound first."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern, WhiteKernel

    kernel = Matern(length_scale=0.2, nu=2.5) + WhiteKernel(1e-4)
    model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=0)
    model.fit(np.asarray(train_x), np.asarray(train_y))
    mean, std = model.predict(pool_x, return_std=True)
    return np.argsort(-(mean + 2.0 * std)).tolist()


@dataclass
class Record:
    index: int
    value: float
    result: Result


@dataclass
class DemoOutcome:
    records: list[Record] = field(default_factory=list)
    retrains: int = 0
    wall_seconds: float = 0.0


class ActiveLearner(BaseThinker):
    """Keep every simulation worker busy with the candidate the surrogate likes best."""

    def __init__(self, queues, candidates, budget, n_initial, retrain_every, seed, progress=None):
        super().__init__(queues, ResourceCounter(2, ["sim"]))
        self.rec.reallocate(None, "sim", 2)
        self.candidates = candidates
        self.budget = budget
        self.n_initial = n_initial
        self.retrain_every = retrain_every
        self.progress = progress
        self.outcome = DemoOutcome()
        rng = np.random.default_rng(seed)
        self.order: list[int] = rng.permutation(len(candidates)).tolist()
        self.submitted: set[int] = set()
        self.lock = threading.Lock()
        self.retrain = threading.Event()
        self.since_retrain = 0

    @task_submitter(task_type="sim")
    def submit_simulation(self):
        with self.lock:
            if len(self.submitted) >= self.budget:
                return  # budget spent: keep the slot, so this agent waits for the end
            index = next(i for i in self.order if i not in self.submitted)
            self.submitted.add(index)
        self.queues.send_inputs(
            self.candidates[index].tolist(),
            method="simulate",
            topic="sim",
            task_info={"index": index},
        )

    @result_processor(topic="sim")
    def store_simulation(self, result: Result):
        self.rec.release("sim", 1)
        if not result.success:
            self.logger.warning("simulation failed: %s", result.failure)
            return
        with self.lock:
            self.outcome.records.append(Record(result.task_info["index"], result.value, result))
            n_done = len(self.outcome.records)
            self.since_retrain += 1
            if n_done >= self.n_initial and self.since_retrain >= self.retrain_every:
                self.since_retrain = 0
                self.retrain.set()
        if self.progress is not None:
            best = max(r.value for r in self.outcome.records)
            self.progress(n_done, best)
        if n_done >= self.budget:
            self.done.set()

    @event_responder(event_name="retrain")
    def retrain_model(self):
        with self.lock:
            xs = [self.candidates[r.index].tolist() for r in self.outcome.records]
            ys = [r.value for r in self.outcome.records]
        self.queues.send_inputs(xs, ys, self.candidates, method="train_and_rank", topic="ml")
        result = self.queues.get_result(topic="ml")
        if result.success:
            with self.lock:
                self.order = result.value
                self.outcome.retrains += 1
        else:
            self.logger.warning("retraining failed: %s", result.failure)

    @agent(startup=True)
    def announce(self):
        self.logger.info(
            "searching %d candidates with a budget of %d", len(self.candidates), self.budget
        )


def run_demo(
    budget: int = 150,
    n_candidates: int = 20_000,
    n_initial: int = 10,
    retrain_every: int = 5,
    seed: int = 1,
    progress=None,
) -> tuple[DemoOutcome, np.ndarray]:
    """Run the campaign on local workers; return what it found and the candidate set."""
    candidates = np.random.default_rng(seed).random((n_candidates, DIMENSIONS))
    queues = Queues(
        methods={"simulate": "sim", "train_and_rank": "ml"},
        topics=["sim", "ml"],
    )
    start = time.perf_counter()
    with (
        WorkerPool(queues, {"simulate": simulate}, workers=2),
        WorkerPool(queues, {"train_and_rank": train_and_rank}, workers=1),
    ):
        thinker = ActiveLearner(
            queues, candidates, budget, n_initial, retrain_every, seed, progress=progress
        )
        thinker.run()
    thinker.outcome.wall_seconds = time.perf_counter() - start
    return thinker.outcome, candidates
