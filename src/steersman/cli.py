"""The ``steersman`` command line. It owns the console; the library only logs."""

from __future__ import annotations

import logging
import statistics
import sys

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from steersman import __version__
from steersman.errors import SteersmanError

console = Console()
errors = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="steersman")
@click.option("-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug.")
def main(verbose: int) -> None:
    """Steer campaigns of computations, deciding what to run next as results arrive.

    Start with `steersman demo`: an active-learning campaign on local workers.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level, format="%(name)s: %(message)s", handlers=[RichHandler(console=errors)]
    )


@main.command()
@click.option("--budget", default=150, show_default=True, help="Simulations to run in all.")
@click.option("--candidates", default=20_000, show_default=True, help="Size of the search space.")
@click.option("--seed", default=1, show_default=True, help="Seed of the search space.")
def demo(budget: int, candidates: int, seed: int) -> None:
    """Run an active-learning campaign on 3 local workers and summarise it.

    Two simulation workers evaluate candidates (a real Monte Carlo computation each) while
    one ML worker retrains a Gaussian-process surrogate every few results; the thinker
    always submits the candidate the surrogate ranks best. The summary compares the best
    found with the true best of the search space.

    Example: steersman demo --budget 100
    """
    import numpy as np

    from steersman.demo import objective, run_demo

    if budget < 12:
        raise click.BadParameter("needs at least 12 simulations", param_hint="--budget")
    with Progress(
        TextColumn("[bold]simulations"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best so far {task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        job = bar.add_task("demo", total=budget, best="-")

        def progress(done: int, best: float) -> None:
            bar.update(job, completed=done, best=f"{best:.4f}")

        outcome, space = run_demo(
            budget=budget, n_candidates=candidates, seed=seed, progress=progress
        )

    truth = objective(space)
    ranking = np.argsort(-truth)
    rank_of = {int(index): rank + 1 for rank, index in enumerate(ranking)}
    best = max(outcome.records, key=lambda r: r.value)
    results = [r.result for r in outcome.records]
    overheads = [r.overhead * 1e3 for r in results]
    found_top10 = len({r.index for r in outcome.records} & {int(i) for i in ranking[:10]})

    table = Table(title="Active-learning demo", show_header=False)
    table.add_row("simulations run", f"{len(outcome.records)} of {len(space):,} candidates")
    table.add_row("surrogate retrains", str(outcome.retrains))
    table.add_row(
        "best found", f"{best.value:.4f} (true rank {rank_of[best.index]} of {len(space):,})"
    )
    table.add_row("true best in space", f"{truth[ranking[0]]:.4f}")
    table.add_row("true top 10 found", f"{found_top10} of 10")
    random_top10 = 10 * len(outcome.records) / len(space)
    table.add_row("random search would find", f"{random_top10:.2f} of the top 10 (expected)")
    table.add_row("wall time", f"{outcome.wall_seconds:.1f} s")
    table.add_row(
        "overhead per task",
        f"median {statistics.median(overheads):.2f} ms, max {max(overheads):.2f} ms",
    )
    console.print(table)


def _import_method(path: str):
    import importlib

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{path!r} is not of the form package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise click.BadParameter(f"cannot import {module_name!r}: {error}") from None
    try:
        return attribute, getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no {attribute!r}") from None


@main.command()
@click.option("--redis", "redis_url", required=True, help="Redis URL, e.g. redis://host:6379/0.")
@click.option("--namespace", default="steersman", show_default=True, help="The run to serve.")
@click.option(
    "--queues",
    "lanes",
    required=True,
    help="Lanes to serve, highest priority first, e.g. sim:high,sim.",
)
@click.option(
    "--method",
    "method_paths",
    multiple=True,
    required=True,
    help="A method this worker may run, as package.module:function (repeat for more).",
)
@click.option("--concurrency", default=1, show_default=True, help="Worker processes.")
@click.option(
    "--grace", default=30.0, show_default=True, help="Seconds SIGTERM waits for running tasks."
)
@click.option(
    "--lease",
    default=10.0,
    show_default=True,
    help="Seconds before a silent worker's tasks go to others.",
)
@click.option(
    "--insecure", is_flag=True, help="Allow unsigned messages to a Redis not on this machine."
)
def worker(redis_url, namespace, lanes, method_paths, concurrency, grace, lease, insecure):
    """Serve tasks from Redis with local worker processes, until SIGTERM or Ctrl-C.

    Runs only the methods named with --method, chosen by name from each task. On SIGTERM,
    running tasks get --grace seconds to finish; unfinished ones go back to Redis.
    Messages are signed with $STEERSMAN_HMAC_KEY when it is set.

    Example: steersman worker --redis redis://head:6379/0 --queues sim:high,sim
    --method mychem.tasks:simulate --concurrency 4
    """
    import signal
    import threading

    from steersman import Queues, WorkerPool
    from steersman.brokers.redis import RedisBroker

    methods = dict(_import_method(path) for path in method_paths)
    lane_list = [lane.strip() for lane in lanes.split(",") if lane.strip()]
    broker = RedisBroker(redis_url, namespace, insecure=insecure, lease_seconds=lease)
    queues = Queues(methods=dict.fromkeys(methods, lane_list[0].split(":")[0]), broker=broker)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    pool = WorkerPool(queues, methods, workers=concurrency, lanes=lane_list).start()
    errors.print(
        f"steersman worker: {concurrency} process(es) serving {', '.join(lane_list)} "
        f"of namespace {namespace!r} at {redis_url}"
    )
    while not stop.wait(3600):  # the handler sets it; the timeout only lets signals in
        pass
    errors.print(f"steersman worker: stopping; running tasks get {grace:g} s")
    pool.stop(timeout=grace)
    broker.close()


def run() -> None:
    """Entry point that turns steersman's own errors into one line and a non-zero exit."""
    try:
        main(standalone_mode=True)
    except SteersmanError as error:
        errors.print(f"[red]error:[/red] {error}")
        sys.exit(2)


if __name__ == "__main__":
    run()
