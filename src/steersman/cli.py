"""The ``steersman`` command line. It owns the console; the library only logs."""

from __future__ import annotations

import logging
import os
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
errors = Console(stderr=True, soft_wrap=True)  # a message stays one line, in a log file too


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="steersman")
@click.option("-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug.")
def main(verbose: int) -> None:
    """Steer campaigns of computations, deciding what to run next as results arrive.

    Start with `steersman demo`: an active-learning campaign on local workers.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler: logging.Handler
    if errors.is_terminal:
        handler = RichHandler(console=errors)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        # A file or a pipe (a batch job's log, a service manager): one line per record, never
        # wrapped at a width, so it can be searched with grep.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
        )
    handler.setLevel(level)  # the console's level; a run's own log file may record more
    logging.basicConfig(level=level, handlers=[handler])


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


@main.command("run")
@click.argument("target", metavar="SPEC.py:NAME")
@click.option("--dry-run", is_flag=True, help="Validate the spec and print the plan; run nothing.")
@click.option("--num-to-run", type=int, default=None, help="Override the spec's budget.")
@click.option("--run-dir", default=None, help="Override the spec's run directory.")
def run_spec(target: str, dry_run: bool, num_to_run: int | None, run_dir: str | None) -> None:
    """Run a molecular-design campaign described by a spec object in a Python file.

    TARGET is path/to/spec.py:name, where name is a steersman.apps.moldesign Spec. The run
    directory receives the molecule database, every task's timings, a log, the best
    molecules and a report with plots. Running the same spec on the same run directory
    again resumes it without repeating finished simulations; Ctrl-C stops it with a
    consistent database.

    Examples:

      steersman run examples/moldesign/spec.py:spec --dry-run

      steersman run examples/moldesign/spec.py:demo
    """
    import dataclasses

    from steersman.apps.moldesign.run import run_campaign
    from steersman.apps.moldesign.spec import load_spec

    spec = load_spec(target)
    changes = {}
    if num_to_run is not None:
        changes["num_to_run"] = num_to_run
    if run_dir is not None:
        changes["run_dir"] = run_dir
        changes["database"] = None
    if changes:
        spec = dataclasses.replace(spec, **changes)
    if dry_run:
        console.print(spec.plan())
        space = spec.load_space()
        console.print(f"[green]spec is valid[/green]: {len(space):,} molecules in the space")
        return
    with Progress(
        TextColumn("[bold]simulations"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("best {task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        job = bar.add_task("run", total=spec.num_to_run, best="-")

        def progress(done: int, best: float | None) -> None:
            bar.update(job, completed=done, best="-" if best is None else f"{best:.3f}")

        outcome = run_campaign(spec, progress=progress)
    table = Table(title=f"Best molecules by {spec.recipes[0].name}")
    table.add_column("rank", justify="right")
    table.add_column("SMILES")
    table.add_column("value", justify="right")
    for rank, (smiles, value) in enumerate(outcome.best, 1):
        table.add_row(str(rank), smiles, f"{value:.3f}")
    console.print(table)
    used = "n/a" if outcome.utilization is None else f"{outcome.utilization:.0%}"
    console.print(
        f"{outcome.simulations} simulations of {outcome.molecules} molecules "
        f"({outcome.failures} failed) in "
        f"{outcome.wall_seconds:.0f} s; simulation workers busy {used} of the time"
    )
    console.print(f"report: {outcome.report}")
    if outcome.stopped_early:
        errors.print("stopped early: run the same command again to resume")
        sys.exit(130)


def _import_method(path: str):
    import importlib

    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{path!r} is not of the form package.module:function")
    # As with `python -m`: modules in the directory the worker is started from are found.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # not found, a syntax error in it, a relative name, ...
        hint = " (is its directory on PYTHONPATH?)" if isinstance(error, ImportError) else ""
        raise click.BadParameter(
            f"cannot import {module_name!r}: {type(error).__name__}: {error}{hint}"
        ) from None
    try:
        return attribute, getattr(module, attribute)
    except AttributeError:
        raise click.BadParameter(f"module {module_name!r} has no {attribute!r}") from None


def _load_config(ctx: click.Context, _param: click.Parameter, path: str | None) -> str | None:
    """Read a worker's options from a TOML file's [worker] table; the command line wins."""
    if path is None:
        return None
    import tomllib

    try:
        with open(path, "rb") as handle:
            table = tomllib.load(handle).get("worker", {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise click.BadParameter(f"cannot read {path}: {error}") from None
    if not isinstance(table, dict):
        raise click.BadParameter(
            f"{path}: 'worker' must be a table ([worker] followed by settings), not {table!r}"
        )
    known = {p.name for p in ctx.command.params}
    aliases = {"redis": "redis_url", "queues": "lanes", "methods": "method_paths"}
    defaults = {}
    for name, value in table.items():
        option = aliases.get(name, name.replace("-", "_"))
        if option not in known:
            raise click.BadParameter(
                f"{path}: unknown worker setting {name!r}; known: redis, namespace, queues, "
                "methods, concurrency, prefetch, grace, lease, burst, value_store, max_idle, "
                "insecure"
            )
        if option == "lanes" and isinstance(value, list):
            value = ",".join(value)
        defaults[option] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _redis_options(func):
    """--redis, --namespace and --insecure, shared by every command that talks to Redis."""
    func = click.option(
        "--insecure", is_flag=True, help="Allow unsigned messages to a Redis not on this machine."
    )(func)
    func = click.option(
        "--namespace",
        envvar="STEERSMAN_NAMESPACE",
        default="steersman",
        show_default=True,
        help="The run (namespace in Redis). Env: STEERSMAN_NAMESPACE.",
    )(func)
    return click.option(
        "--redis",
        "redis_url",
        envvar="STEERSMAN_REDIS_URL",
        required=True,
        help="Redis URL, e.g. redis://host:6379/0 (rediss:// for TLS, user:password@ for "
        "ACLs). Env: STEERSMAN_REDIS_URL.",
    )(func)


def _admin_broker(redis_url: str, namespace: str, insecure: bool):
    from steersman.brokers.redis import RedisBroker

    return RedisBroker(redis_url, namespace, insecure=insecure, connect_timeout=10)


@main.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="TOML file whose [worker] table sets any option below (the command line wins).",
)
@_redis_options
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
    "--prefetch",
    default="auto",
    show_default=True,
    help="Tasks a process may hold beyond the one it runs (a number, or auto).",
)
@click.option(
    "--grace", default=30.0, show_default=True, help="Seconds SIGTERM waits for running tasks."
)
@click.option(
    "--lease",
    default=10.0,
    show_default=True,
    help="Seconds before a silent worker's tasks go to others.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty and nothing runs.")
@click.option(
    "--value-store",
    type=click.Path(file_okay=False),
    default=None,
    help="Shared directory of big values passed by reference, if the thinker's broker names "
    "one (value_store=); by default they are kept in Redis.",
)
@click.option(
    "--max-idle",
    type=float,
    default=None,
    help="Exit after this many seconds without a task (for batch allocations).",
)
def worker(
    redis_url,
    namespace,
    insecure,
    lanes,
    method_paths,
    concurrency,
    prefetch,
    grace,
    lease,
    burst,
    value_store,
    max_idle,
):
    """Serve tasks from Redis with local worker processes, until SIGTERM or Ctrl-C.

    Runs only the methods named with --method, chosen by name from each task. On SIGTERM,
    running tasks get --grace seconds to finish; unfinished ones go back to Redis. If Redis
    goes away the worker waits for it, retrying with backoff, for ever. Messages are signed
    with $STEERSMAN_HMAC_KEY (the key, or @path of a file holding it) when it is set.

    Example: steersman worker --redis redis://head:6379/0 --queues sim:high,sim
    --method mychem.tasks:simulate --concurrency 4

    The same from a file: steersman worker --config worker.toml, where worker.toml has
    a [worker] table with redis = "...", queues = ["sim:high", "sim"],
    methods = ["mychem.tasks:simulate"], concurrency = 4.
    """
    import signal
    import threading

    from steersman import Queues, WorkerPool
    from steersman.brokers.redis import RedisBroker

    if isinstance(method_paths, str):
        method_paths = [method_paths]
    methods = dict(_import_method(path) for path in method_paths)
    lane_list = [lane.strip() for lane in lanes.split(",") if lane.strip()]
    if not lane_list:
        raise click.BadParameter("name at least one lane, e.g. sim", param_hint="--queues")
    if prefetch != "auto":
        try:
            prefetch = int(prefetch)
        except ValueError:
            raise click.BadParameter("a whole number or auto", param_hint="--prefetch") from None
    broker = RedisBroker(
        redis_url,
        namespace,
        insecure=insecure,
        lease_seconds=lease,
        connect_timeout=None,
        value_store=value_store,
    )
    queues = Queues(methods=dict.fromkeys(methods, lane_list[0].split(":")[0]), broker=broker)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    pool = WorkerPool(
        queues, methods, workers=concurrency, lanes=lane_list, prefetch=prefetch
    ).start()
    errors.print(
        f"steersman worker: {concurrency} process(es) serving {', '.join(lane_list)} "
        f"of namespace {namespace!r} at {broker.where}"
    )
    why = "stopping"
    # Burst and idle limits are checked twice a second; otherwise the wait only lets signals in.
    period = 0.5 if (burst or max_idle is not None) else 3600
    failing: list[bool] = []  # the last queue-depth read failed (logged once per outage)
    try:
        while not stop.wait(period):
            idle = pool.idle_seconds()
            if idle is None:
                continue
            if max_idle is not None and idle >= max_idle:
                why = f"idle for {idle:.0f} s"
                break
            if burst and _lanes_empty(broker, lane_list, failing):
                why = "queues empty (--burst)"
                break
        errors.print(f"steersman worker: {why}; running tasks get {grace:g} s")
    finally:
        pool.stop(timeout=grace)
        broker.close()


def _lanes_empty(broker, lanes: list[str], failing: list[bool]) -> bool:
    """Whether every lane is empty; False while Redis cannot tell (it is away: wait)."""
    try:
        depths = broker.queue_depths()
    except Exception as error:  # redis-py's connection errors: Redis is away for now
        if not failing:
            logging.getLogger(__name__).warning(
                "cannot read the queue depths: %s; waiting for Redis", error
            )
            failing.append(True)
        return False
    failing.clear()
    return not any(depths.get(lane) for lane in lanes)


@main.command()
@_redis_options
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
def status(redis_url, namespace, insecure, watch):
    """Show a run's queues (waiting, in flight, done, failed) and its live workers.

    Example: steersman status --redis redis://head:6379/0 --namespace run42 --watch 2
    """
    broker = _admin_broker(redis_url, namespace, insecure)
    try:
        if watch is None:
            console.print(_status_view(broker.status()))
            return
        import signal
        import threading

        # Ctrl-C or SIGTERM ends the watch (handled here: an inherited "ignore" would
        # otherwise swallow Ctrl-C).
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        if not console.is_terminal:  # piped or logged: print each refresh in turn
            while not stop.is_set():
                console.print(_status_view(broker.status()))
                stop.wait(watch)
            return
        from rich.live import Live

        with Live(_status_view(broker.status()), console=console, auto_refresh=False) as live:
            while not stop.wait(watch):
                live.update(_status_view(broker.status()), refresh=True)
    finally:
        broker.close()


def _short_task(entry: str) -> str:
    """'<task id> <method>' as 'method (first 8 of the id)'."""
    task_id, _, method = entry.partition(" ")
    return f"{method} ({task_id[:8]})"


def _status_view(state):
    import time

    from rich.console import Group

    queues = Table(title=f"queues of namespace {state['namespace']!r}")
    for column in ("queue", "waiting", "in flight", "done", "failed"):
        queues.add_column(column, justify="left" if column == "queue" else "right")
    for name, row in sorted(state["queues"].items()):
        queues.add_row(name, *(str(row[k]) for k in ("depth", "in_flight", "done", "failed")))
    clients = Table(title="workers and clients")
    for column in ("host", "pid", "role", "lanes", "running", "holds", "last heartbeat"):
        clients.add_column(column, overflow="fold")
    now = time.time()
    for info in state["clients"]:
        beat = info.get("beat")
        ago = f"{now - beat:.1f} s ago" if beat else "-"
        if not info.get("alive"):
            ago += " (lease ran out)"
        clients.add_row(
            str(info.get("host", "?")),
            str(info.get("pid", "?")),
            str(info.get("role", "?")),
            ",".join(info.get("lanes", [])) or "-",
            "\n".join(_short_task(entry) for entry in info.get("running", [])) or "-",
            str(info.get("held", 0)),
            ago,
        )
    parts = [queues, clients]
    aside = state.get("set_aside") or {}
    if aside.get("tasks") or aside.get("results"):
        parts.append(
            f"[yellow]{aside.get('tasks', 0)} task(s) and {aside.get('results', 0)} result(s) "
            "written by another steersman release are set aside: run a worker or client of "
            "that release on this namespace (docs/redis.md)[/yellow]"
        )
    return Group(*parts)


@main.command()
@_redis_options
@click.option("--limit", default=20, show_default=True, help="Show at most this many.")
@click.option("--requeue", is_flag=True, help="Queue every failed task again as a fresh attempt.")
def failed(redis_url, namespace, insecure, limit, requeue):
    """List the tasks of a run that failed, newest first; --requeue runs them again.

    Example: steersman failed --redis redis://head:6379/0 --namespace run42 --requeue
    """
    broker = _admin_broker(redis_url, namespace, insecure)
    try:
        if requeue:
            count = broker.requeue_failed()
            console.print(f"queued {count} failed task(s) again")
            return
        results = broker.failed(limit)
        table = Table(title=f"failed tasks of namespace {namespace!r}")
        table.add_column("task", no_wrap=True)
        for column in ("method", "attempt", "kind", "reason"):
            table.add_column(column)
        for result in results:
            failure = result.failure
            table.add_row(
                result.task_id,
                result.method,
                str(result.attempt),
                failure.kind if failure else "?",
                str(failure) if failure else "?",
            )
        console.print(table)
    finally:
        broker.close()


@main.command()
@_redis_options
@click.argument("task_ids", nargs=-1, required=True)
def cancel(redis_url, namespace, insecure, task_ids):
    """Cancel tasks by id: queued ones at once, running ones at their worker's next heartbeat.

    Each cancelled task's Result (failure kind "cancelled") goes to its thinker.

    Example: steersman cancel --redis redis://head:6379/0 --namespace run42 3f2a... 9c1b...
    """
    broker = _admin_broker(redis_url, namespace, insecure)
    try:
        queued, running = broker.cancel(task_ids)
        console.print(
            f"cancelled {queued} queued task(s); asked workers to stop {running} running; "
            f"{len(task_ids) - queued - running} not found (finished or unknown)"
        )
    finally:
        broker.close()


@main.command()
@_redis_options
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(redis_url, namespace, insecure, queue, yes):
    """Drop every task waiting in QUEUE (all its priority lanes). Running tasks are kept.

    Example: steersman purge --redis redis://head:6379/0 --namespace run42 sim --yes
    """
    if not yes:
        click.confirm(f"drop every waiting task of queue {queue!r} in {namespace!r}?", abort=True)
    broker = _admin_broker(redis_url, namespace, insecure)
    try:
        console.print(f"dropped {broker.purge(queue)} waiting task(s) of queue {queue!r}")
    finally:
        broker.close()


def run() -> None:
    """Entry point that turns steersman's own errors into one line and a non-zero exit."""
    import redis
    from rich.markup import escape

    try:
        main(standalone_mode=True)
    except SteersmanError as error:
        # one line, unwrapped
        errors.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        sys.exit(2)
    except redis.RedisError as error:  # a command that reads Redis directly
        errors.print(
            f"[red]error:[/red] Redis: {escape(str(error))}; is redis-server running there, "
            "and is --redis (or STEERSMAN_REDIS_URL) right?",
            soft_wrap=True,
        )
        sys.exit(2)


if __name__ == "__main__":
    run()
