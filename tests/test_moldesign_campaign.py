"""Campaigns end to end with real xTB on a tiny search space: thinkers, run directory,
resume, failures, specs and the ``steersman run`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steersman.apps.moldesign.recipes import ElectronAffinity, IonizationPotential
from steersman.apps.moldesign.run import run_campaign
from steersman.apps.moldesign.scorers import FittedTanimotoGP, KNNScorer, TanimotoGP
from steersman.apps.moldesign.selectors import (
    DiversityGreedySelector,
    EHVISelector,
    EISelector,
    GreedySelector,
    ParetoSelector,
    UCBSelector,
)
from steersman.apps.moldesign.spec import Spec, SpecError, Starter, Workers, load_spec
from steersman.apps.moldesign.thinkers import (
    BruteForceThinker,
    MultiFidelityThinker,
    SingleStepThinker,
)

ROOT = Path(__file__).resolve().parents[1]
QM9 = ROOT / "examples" / "moldesign" / "qm9-1000.smi"
RECIPE = IonizationPotential(vertical=True)  # one relaxation and two single points: quick


def space(tmp_path: Path, n: int = 16, extra: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "space.smi"
    lines = QM9.read_text().split()[:n]
    path.write_text("\n".join([*extra, *lines]) + "\n")
    return path


def make_spec(tmp_path, **changes) -> Spec:
    options = dict(
        search_space=changes.pop("search_space", None) or space(tmp_path),
        recipes=[RECIPE],
        scorer=TanimotoGP(),
        selector=UCBSelector(),
        starter=Starter(count=4, seed=1),
        num_to_run=8,
        workers=Workers(simulation=2, ml=1),
        run_dir=tmp_path / "run",
    )
    options.update(changes)
    return Spec(**options)


def simulated(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "tasks.jsonl").read_text().splitlines()]
    return [r for r in rows if r["method"] == "simulate"]


@pytest.mark.parametrize(
    ("scorer", "selector"),
    [(TanimotoGP, UCBSelector), (FittedTanimotoGP, EISelector)],
    ids=["gp-ucb", "fitted-gp-ei"],
)
def test_single_step_thinker_learns_between_simulations_and_writes_its_report(
    tmp_path, scorer, selector
):
    spec = make_spec(tmp_path, scorer=scorer(), selector=selector())
    outcome = run_campaign(spec)
    assert outcome.simulations == 8 and outcome.failures == 0
    run_dir = tmp_path / "run"
    assert len(simulated(run_dir)) == 8
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "ranked" for e in events)  # the model reordered the queue
    trained = [
        json.loads(line)
        for line in (run_dir / "tasks.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    assert trained and all(t["success"] for t in trained)
    for name in ("report.md", "best.md", "run.log", "database.jsonl"):
        assert (run_dir / name).stat().st_size > 0, name
    for plot in ("best_vs_simulations.png", "model_error.png", "utilization.png"):
        assert (run_dir / plot).read_bytes()[:4] == b"\x89PNG", plot
    assert "![utilization](utilization.png)" in outcome.report.read_text()
    best = [value for _, value in outcome.best]
    assert best == sorted(best, reverse=True) and len(best) == 8
    assert 0 < outcome.utilization <= 1


def test_a_second_run_resumes_without_repeating_finished_simulations(tmp_path):
    spec = make_spec(tmp_path, num_to_run=5, scorer=KNNScorer(n_neighbors=2))
    run_campaign(spec)
    first = [r["smiles"] for r in simulated(tmp_path / "run")]
    assert len(first) == 5
    run_campaign(dataclasses.replace(spec, num_to_run=8))
    both = [r["smiles"] for r in simulated(tmp_path / "run")]
    assert len(both) == 8 and both[:5] == first
    assert len(set(both)) == 8  # nothing ran twice
    # A run whose budget is already spent ends at once, without sending anything.
    outcome = run_campaign(dataclasses.replace(spec, num_to_run=8))
    assert len(simulated(tmp_path / "run")) == 8 and outcome.molecules == 8


def test_a_diversity_aware_selector_drives_a_campaign(tmp_path):
    spec = make_spec(tmp_path, selector=DiversityGreedySelector(max_similarity=0.5))
    outcome = run_campaign(spec)
    assert outcome.simulations == 8
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").open()]
    assert any(e["event"] == "ranked" for e in events)


def test_brute_force_thinker_runs_the_space_in_order(tmp_path):
    spec = make_spec(tmp_path, thinker=BruteForceThinker, num_to_run=6)
    outcome = run_campaign(spec)
    expected = spec.load_space()[:6]
    assert sorted(r["smiles"] for r in simulated(tmp_path / "run")) == sorted(expected)
    assert outcome.simulations == 6


def test_an_unembeddable_molecule_is_recorded_and_the_run_goes_on(tmp_path):
    spec = make_spec(
        tmp_path,
        search_space=space(tmp_path, n=5, extra=("C1#CC1",)),
        thinker=BruteForceThinker,
        num_to_run=6,
        selector=GreedySelector(),
    )
    outcome = run_campaign(spec)
    assert outcome.simulations == 6 and outcome.failures == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "database.jsonl").open()]
    failed = [r for r in records if r["failures"]]
    assert [r["smiles"] for r in failed] == ["C1#CC1"]
    assert "embed" in failed[0]["failures"][RECIPE.name]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_to_run", "ten", "spec.num_to_run: expected a positive integer"),
        ("recipes", [], "spec.recipes: expected a non-empty list"),
        ("selector", "greedy", "spec.selector: expected a Selector"),
        ("search_space", "molecules.csv", "spec.search_space: expected files ending in .smi"),
        ("thinker", dict, "spec.thinker: expected a MoleculeThinker class"),
        ("selector", ParetoSelector(), "spec.recipes: expected at least 2 recipes"),
    ],
)
def test_a_malformed_spec_names_the_bad_field(tmp_path, field, value, message):
    with pytest.raises(SpecError, match=message.replace(".", r"\.")):
        make_spec(tmp_path, **{field: value})


def test_run_command_dry_run_and_errors(tmp_path):
    path = tmp_path / "campaign.py"
    path.write_text(
        "from steersman.apps.moldesign.recipes import IonizationPotential\n"
        "from steersman.apps.moldesign.scorers import TanimotoGP\n"
        "from steersman.apps.moldesign.selectors import UCBSelector\n"
        "from steersman.apps.moldesign.spec import Spec\n"
        f"spec = Spec(search_space={str(QM9)!r}, recipes=[IonizationPotential()],\n"
        "            scorer=TanimotoGP(), selector=UCBSelector(), num_to_run=10)\n"
    )
    command = [sys.executable, "-m", "steersman.cli", "run"]
    dry = subprocess.run([*command, f"{path}:spec", "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "ip-adiabatic-gfn2" in dry.stdout and "1,000 molecules" in dry.stdout
    path.write_text(path.read_text().replace("num_to_run=10", "num_to_run=-1"))
    bad = subprocess.run([*command, f"{path}:spec", "--dry-run"], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "spec.num_to_run: expected a positive integer, got -1" in bad.stderr
    path.write_text(path.read_text().replace("num_to_run=-1", "num_to_run=10"))
    missing = subprocess.run([*command, f"{path}:nothing"], capture_output=True, text=True)
    assert missing.returncode == 2 and "has no attribute 'nothing'" in missing.stderr
    with pytest.raises(SpecError, match="expected path/to/spec.py:name"):
        load_spec(str(path))


def test_multi_fidelity_thinker_screens_cheaply_and_promotes_the_best_reusing_geometries(
    tmp_path,
):
    cheap, full = IonizationPotential(vertical=True), IonizationPotential(vertical=False)
    spec = make_spec(
        tmp_path,
        search_space=space(tmp_path, n=14),
        recipes=[full],
        thinker=MultiFidelityThinker,
        thinker_options={"cheap": cheap, "promote": 0.3, "min_promoted": 3},
        starter=Starter(count=3, seed=2),
        num_to_run=14,
    )
    outcome = run_campaign(spec)
    sims = simulated(tmp_path / "run")
    assert len(sims) == 14 == outcome.simulations  # both levels count against the budget
    screened = {r["smiles"]: r for r in sims if r["level"] == "cheap"}
    promoted = [r for r in sims if r["level"] == "full"]
    assert 3 <= len(promoted) < len(screened)
    for row in promoted:  # only after its screening came back
        assert row["smiles"] in screened
        assert row["created"] >= screened[row["smiles"]]["received"]
    records = {
        r["smiles"]: r
        for r in map(json.loads, (tmp_path / "run" / "database.jsonl").read_text().splitlines())
    }
    for smiles in screened:
        record = records[smiles]
        assert cheap.name in record["properties"]
        assert (full.name in record["properties"]) == any(r["smiles"] == smiles for r in promoted)
        neutral = [g for g in record["geometries"] if g["level"] == "gfn2" and g["charge"] == 0]
        assert len(neutral) == 1  # the promotion relaxed only the cation
    # The first three screened go on whatever their value; after them, a molecule goes on
    # only if its cheap value is in the best 30% of those screened by then.
    order = sorted(screened, key=lambda smiles: screened[smiles]["received"])
    values = [records[smiles]["properties"][cheap.name] for smiles in order]
    allowed = set(order[:3]) | {
        smiles
        for n, smiles in enumerate(order)
        if n >= 3 and values[n] >= np.quantile(values[: n + 1], 0.7)
    }
    assert {row["smiles"] for row in promoted} <= allowed
    assert len(allowed) < len(order)  # some screened molecules were left behind
    assert set(outcome.core_seconds) == {"cheap", "full"}
    assert all(seconds > 0 for seconds in outcome.core_seconds.values())
    assert "simulation core-seconds" in outcome.report.read_text()
    # Run again with its budget spent: it counts both levels from the database and ends.
    assert run_campaign(spec).simulations == 14
    assert all(v == v for _, v in outcome.best)  # the best table holds the objective only


def test_multi_fidelity_run_goes_on_when_promotions_fail(tmp_path):
    from steersman.apps.moldesign.replay import Replay

    truth = ROOT / "bench" / "data" / "qm9-1000-ip-gfn2.jsonl"
    rows = [json.loads(line) for line in truth.read_text().splitlines()[:40]]
    rows = [row for row in rows if not row["failures"]][:12]
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    smi = tmp_path / "space.smi"
    smi.write_text("".join(row["smiles"] + "\n" for row in rows))
    cheap, full = IonizationPotential(vertical=True), IonizationPotential(vertical=False)

    class BrokenExpensiveLevel(Replay):
        """Screens as recorded; every promotion's task raises, as a crashing code would."""

        def __call__(self, smiles, key, recipes, record=None):
            if any(r.name == full.name for r in recipes):
                raise RuntimeError(f"the expensive level crashed on {smiles}")
            return super().__call__(smiles, key, recipes, record)

    spec = make_spec(
        tmp_path,
        search_space=smi,
        recipes=[full],
        simulator=BrokenExpensiveLevel(table, spin=False, scale=0),
        thinker=MultiFidelityThinker,
        thinker_options={"cheap": cheap, "promote": 0.5, "min_promoted": 2},
        starter=Starter(count=2, seed=0),
        num_to_run=16,
    )
    outcome = run_campaign(spec)  # ends: a failed promotion is not left "running"
    sims = simulated(tmp_path / "run")
    promoted = [r for r in sims if r["level"] == "full"]
    assert len(sims) == 16 == outcome.simulations
    assert promoted and not any(r["success"] for r in promoted)
    assert all("expensive level crashed" in r["failure"] for r in promoted)
    assert outcome.failures == len(promoted)  # each failed task counted once
    assert outcome.best == []  # no molecule reached the objective


def test_a_user_thinker_taking_its_own_options_is_not_second_guessed(tmp_path):
    class Patient(SingleStepThinker):
        def __init__(self, queues, spec, space, store, progress=None, **options):
            self.patience = options.pop("patience", 3)
            super().__init__(queues, spec, space, store, progress, **options)

    spec = make_spec(tmp_path, thinker=Patient, thinker_options={"patience": 5})
    assert spec.thinker_options == {"patience": 5}


@pytest.mark.parametrize(
    ("thinker", "options", "message"),
    [
        (MultiFidelityThinker, {}, "spec.thinker_options.cheap: expected the cheap Recipe"),
        (
            MultiFidelityThinker,
            {"cheap": ElectronAffinity(vertical=True), "promote": 1.5},
            "spec.thinker_options.promote: expected a fraction in (0, 1], got 1.5",
        ),
        (
            SingleStepThinker,
            {"min_trainig": 4},
            "spec.thinker_options: SingleStepThinker has no option 'min_trainig'; expected "
            "some of: batch, believer, inference_chunks, min_training, queue_ahead",
        ),
        (BruteForceThinker, {"queue_ahead": -1}, "spec.thinker_options.queue_ahead: expected"),
    ],
    ids=["mf-no-cheap", "mf-promote", "unknown-option", "queue-ahead"],
)
def test_thinker_options_are_checked_when_the_spec_is_made(tmp_path, thinker, options, message):
    # At validation, so `steersman run --dry-run` reports them before anything runs.
    with pytest.raises(SpecError, match=re.escape(message)):
        make_spec(tmp_path, thinker=thinker, thinker_options=options)


@pytest.mark.parametrize("selector", [ParetoSelector(), EHVISelector()], ids=["pareto", "ehvi"])
def test_two_objective_selectors_drive_a_campaign_over_two_recipes(tmp_path, selector):
    recipes = [IonizationPotential(vertical=True), ElectronAffinity(vertical=True)]
    spec = make_spec(tmp_path, recipes=recipes, selector=selector, num_to_run=8)
    outcome = run_campaign(spec)
    assert outcome.simulations == 8 and outcome.failures == 0
    run_dir = tmp_path / "run"
    tasks = [json.loads(line) for line in (run_dir / "tasks.jsonl").read_text().splitlines()]
    trained = {t["objective"] for t in tasks if t["method"] == "train"}
    inferred = {t["objective"] for t in tasks if t["method"] == "infer"}
    assert trained == inferred == {0, 1}  # one model per objective, each used to rank
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "ranked" for e in events)
    records = [json.loads(line) for line in (run_dir / "database.jsonl").read_text().splitlines()]
    assert all(set(r["properties"]) == {r.name for r in recipes} for r in records)
    header = (run_dir / "best.md").read_text()
    assert all(r.name in header for r in recipes)


def test_a_campaign_runs_on_redis_with_standalone_workers(
    tmp_path, redis_server, start_worker, monkeypatch
):
    from conftest import TEST_KEY

    monkeypatch.setenv("STEERSMAN_HMAC_KEY", TEST_KEY)
    namespace = f"moldesign-{tmp_path.name}"
    tasks = "steersman.apps.moldesign.tasks"
    spec = make_spec(
        tmp_path, workers=Workers(redis=redis_server.url, namespace=namespace, local=False)
    )
    plan = spec.plan()
    assert f"--method {tasks}:simulate" in plan and f"--method {tasks}:infer" in plan
    sim = start_worker(
        redis_server, namespace, "--queues", "simulate", "--concurrency", "2",
        "--method", f"{tasks}:simulate",
    )  # fmt: skip
    ml = start_worker(
        redis_server, namespace, "--queues", "ml",
        "--method", f"{tasks}:train", "--method", f"{tasks}:infer",
    )  # fmt: skip
    outcome = run_campaign(spec)
    assert outcome.simulations == 8 and outcome.failures == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "tasks.jsonl").open()]
    assert {r["method"] for r in rows} == {"simulate", "train", "infer"}
    assert all(r["success"] for r in rows)
    # The work was done by processes of the standalone workers (each in its own session).
    for row in rows:
        pid = int(row["worker"].split(":")[1])
        assert os.getsid(pid) == (sim.pid if row["method"] == "simulate" else ml.pid), row
    assert len({r["worker"] for r in rows if r["method"] == "simulate"}) == 2


def test_a_replayed_campaign_answers_from_its_table_and_keeps_the_worker_busy(tmp_path):
    from steersman.apps.moldesign.replay import Replay

    truth = ROOT / "bench" / "data" / "qm9-1000-ip-gfn2.jsonl"
    rows = [json.loads(line) for line in truth.read_text().splitlines()[:12]]
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    smi = tmp_path / "space.smi"
    smi.write_text("".join(row["smiles"] + "\n" for row in rows) + "CCCCCCCCCCCCCCCCCC\n")
    full = IonizationPotential(vertical=False)
    spec = make_spec(
        tmp_path,
        search_space=smi,
        recipes=[full],
        simulator=Replay(table, scale=0.5),
        thinker=BruteForceThinker,
        num_to_run=13,
    )
    outcome = run_campaign(spec)
    assert outcome.simulations == 13
    assert outcome.failures == 1 + sum(full.name in row["failures"] for row in rows)
    records = {
        r["smiles"]: r for r in map(json.loads, (tmp_path / "run" / "database.jsonl").open())
    }
    for row in rows:
        record = records[row["smiles"]]
        if full.name in row["properties"]:
            assert record["properties"][full.name] == row["properties"][full.name]
        else:  # a molecule the real run could not compute fails again, with its reason
            assert record["failures"][full.name] == row["failures"][full.name]
    assert "not in the replay table" in records["CCCCCCCCCCCCCCCCCC"]["failures"][full.name]
    # Each replayed simulation kept its worker busy for half the seconds the table gives.
    busy = {r["smiles"]: r["finished"] - r["started"] for r in simulated(tmp_path / "run")}
    for row in rows:
        expected = 0.5 * sum(row["seconds"].values())
        assert expected <= busy[row["smiles"]] < expected + 2.0, row["smiles"]


def test_ctrl_c_stops_a_run_with_a_consistent_database_and_the_next_run_resumes(tmp_path):
    import signal

    from conftest import wait_until

    path = tmp_path / "campaign.py"
    path.write_text(
        "from steersman.apps.moldesign.recipes import IonizationPotential\n"
        "from steersman.apps.moldesign.scorers import KNNScorer\n"
        "from steersman.apps.moldesign.selectors import UCBSelector\n"
        "from steersman.apps.moldesign.spec import Spec, Starter\n"
        f"spec = Spec(search_space={str(QM9)!r}, recipes=[IonizationPotential()],\n"
        "            scorer=KNNScorer(n_neighbors=2), selector=UCBSelector(),\n"
        "            starter=Starter(count=4), num_to_run=400, run_dir='run')\n"
    )
    command = [sys.executable, "-m", "steersman.cli", "run", f"{path}:spec"]
    database = tmp_path / "run" / "database.jsonl"
    errors = tmp_path / "stderr.txt"
    with errors.open("wb") as sink:
        run = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        wait_until(
            lambda: database.exists() and len(database.read_text().splitlines()) >= 6,
            120,
            "six molecules in the database",
        )
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
    finally:
        run.kill()
    err = errors.read_text()
    assert run.returncode == 130, err
    assert "stopped early" in err and "run the same command again" in err
    lines = database.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole: nothing cut short
    assert len(records) >= 6
    before = {r["smiles"] for r in records}
    # The next run resumes: what was finished is not simulated again.
    again = subprocess.run(
        [*command, "--num-to-run", str(len(before) + 2)],
        cwd=tmp_path,
        capture_output=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    sims = simulated(tmp_path / "run")
    smiles = [r["smiles"] for r in sims if r["success"]]
    assert len(smiles) == len(set(smiles))  # nothing ran twice
    assert before < set(smiles)


def test_running_simulations_count_at_their_predicted_value_in_the_next_training(tmp_path):
    from steersman import Queues
    from steersman.apps.moldesign.store import MoleculeStore
    from steersman.apps.moldesign.thinkers import SingleStepThinker

    spec = make_spec(tmp_path)
    (tmp_path / "run").mkdir()
    space_list = spec.load_space()
    queues = Queues(methods={"simulate": "simulate", "train": "ml", "infer": "ml"})
    with MoleculeStore(spec.database) as store:
        thinker = SingleStepThinker(queues, spec, space_list, store)
        thinker.predicted = {3: (9.5, 0.2, 4)}  # sent with this prediction, still running
        measured = [(["C"], [10.0])]
        assert thinker.believed(measured) == [(["C", space_list[3]], [10.0, 9.5])]
        thinker.finished.add(3)  # its result is in: it trains at its measured value instead
        assert thinker.believed(measured) == measured
        thinker.close()
        off = SingleStepThinker(queues, spec, space_list, store, believer=False)
        off.predicted = {3: (9.5, 0.2, 4)}
        assert off.believed(measured) == measured
        off.close()
    queues.close()
