"""The specification of a molecular-design campaign, validated when it is made.

A spec is a Python object in a file you write, loaded by ``steersman run spec.py:spec``::

    spec = Spec(
        search_space="qm9-1000.smi",
        recipes=[IonizationPotential()],
        scorer=TanimotoGP(),
        selector=UCBSelector(beta=2.0),
        num_to_run=60,
        run_dir="run",
    )

Every field is checked: a wrong one is a :class:`SpecError` that names the field and what was
expected.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steersman.errors import SteersmanError


class SpecError(SteersmanError):
    """A spec field is missing or wrong; the message names it and what was expected."""


@dataclass
class Starter:
    """How the first molecules are picked, before any model exists: ``count`` of them,
    at random (``"random"``, with ``seed``) or the first ones of the search space
    (``"first"``)."""

    count: int = 8
    how: str = "random"
    seed: int = 0


@dataclass
class Workers:
    """How many simulation and ML workers, and where tasks go: the embedded broker
    (``redis=None``) or a Redis server (``redis="redis://host:6379/0"``, with workers
    started by ``steersman worker`` on any host, or here with ``local=True``)."""

    simulation: int = 2
    ml: int = 1
    redis: str | None = None
    namespace: str = "moldesign"
    local: bool = True


@dataclass
class Spec:
    """What to search, how to compute and learn, and how much to spend.

    ``search_space`` is one or more ``.smi`` files (optionally ``.gz``), one SMILES per line
    (anything after the first whitespace is ignored). ``recipes[0]`` is the property to
    maximize (the first two for a multi-objective selector). ``num_to_run`` counts every
    simulation started, failures included, across resumes of the same ``run_dir``.
    """

    search_space: str | Path | list[str | Path]
    recipes: list[Any]
    scorer: Any
    selector: Any
    num_to_run: int
    run_dir: str | Path = "run"
    database: str | Path | None = None
    starter: Starter = field(default_factory=Starter)
    simulator: Any = None
    thinker: Any = None
    thinker_options: dict[str, Any] = field(default_factory=dict)
    workers: Workers = field(default_factory=Workers)

    def __post_init__(self) -> None:
        from steersman.apps.moldesign.recipes import Recipe
        from steersman.apps.moldesign.scorers import Scorer
        from steersman.apps.moldesign.selectors import Selector
        from steersman.apps.moldesign.thinkers import MoleculeThinker, SingleStepThinker

        spaces = self.search_space
        spaces = [spaces] if isinstance(spaces, str | Path) else spaces
        if not isinstance(spaces, list) or not spaces:
            _bad("search_space", "a .smi file path or a list of them", self.search_space)
        self.search_space = [Path(p) for p in spaces]
        for path in self.search_space:
            if not path.name.endswith((".smi", ".smi.gz")):
                _bad("search_space", "files ending in .smi or .smi.gz", str(path))
        if not isinstance(self.recipes, list | tuple) or not self.recipes:
            _bad("recipes", "a non-empty list of Recipe objects", self.recipes)
        self.recipes = list(self.recipes)
        for recipe in self.recipes:
            if not isinstance(recipe, Recipe):
                _bad("recipes", "Recipe objects (e.g. IonizationPotential())", recipe)
        if len({r.name for r in self.recipes}) != len(self.recipes):
            _bad("recipes", "recipes with distinct names", [r.name for r in self.recipes])
        if not isinstance(self.scorer, Scorer):
            _bad("scorer", "a Scorer (e.g. TanimotoGP() or KNNScorer())", self.scorer)
        if not isinstance(self.selector, Selector):
            _bad("selector", "a Selector (e.g. UCBSelector())", self.selector)
        wanted = getattr(self.selector, "n_objectives", 1)
        if wanted > len(self.recipes):
            _bad(
                "recipes",
                f"at least {wanted} recipes for {type(self.selector).__name__}, which ranks by "
                f"{wanted} objectives",
                [r.name for r in self.recipes],
            )
        if isinstance(self.num_to_run, bool) or not isinstance(self.num_to_run, int):
            _bad("num_to_run", "a positive integer", self.num_to_run)
        if self.num_to_run < 1:
            _bad("num_to_run", "a positive integer", self.num_to_run)
        self.run_dir = Path(self.run_dir)
        self.database = Path(self.database) if self.database else self.run_dir / "database.jsonl"
        if not isinstance(self.starter, Starter):
            _bad("starter", "a Starter(count=..., how='random'|'first')", self.starter)
        if self.starter.how not in ("random", "first"):
            _bad("starter.how", "'random' or 'first'", self.starter.how)
        if not isinstance(self.starter.count, int) or self.starter.count < 1:
            _bad("starter.count", "a positive integer", self.starter.count)
        if self.thinker is None:
            self.thinker = SingleStepThinker
        if not (isinstance(self.thinker, type) and issubclass(self.thinker, MoleculeThinker)):
            _bad("thinker", "a MoleculeThinker class (e.g. SingleStepThinker)", self.thinker)
        if not isinstance(self.thinker_options, dict):
            _bad("thinker_options", "a dict of keyword arguments", self.thinker_options)
        if not all(isinstance(name, str) for name in self.thinker_options):
            _bad("thinker_options", "option names as strings", list(self.thinker_options))
        if not isinstance(self.workers, Workers):
            _bad("workers", "a Workers(simulation=..., ml=...)", self.workers)
        for name in ("simulation", "ml"):
            count = getattr(self.workers, name)
            if not isinstance(count, int) or count < 1:
                _bad(f"workers.{name}", "a positive integer", count)
        # Last: a thinker's options are judged against the rest of the spec.
        self.thinker.check_options(self, self.thinker_options)

    def load_space(self) -> list[str]:
        """The search space's SMILES, in file order, each once."""
        seen: dict[str, None] = {}
        for path in self.search_space:
            if not path.exists():
                raise SpecError(f"spec.search_space: {path} does not exist")
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt") as handle:
                for line in handle:
                    words = line.split()
                    if words:
                        seen.setdefault(words[0], None)
        if not seen:
            raise SpecError(
                f"spec.search_space: no SMILES in {', '.join(map(str, self.search_space))}"
            )
        return list(seen)

    def plan(self) -> str:
        """What a run of this spec would do, for ``--dry-run``."""
        workers = self.workers
        where = "the embedded broker" if workers.redis is None else f"Redis at {workers.redis}"
        lines = [
            f"search space : {', '.join(map(str, self.search_space))}",
            f"recipes      : {', '.join(r.name for r in self.recipes)}",
            f"scorer       : {self.scorer!r}",
            f"selector     : {self.selector!r}",
            f"starter      : {self.starter.count} molecules, {self.starter.how}",
            f"thinker      : {self.thinker.__name__} {self.thinker_options or ''}".rstrip(),
            f"budget       : {self.num_to_run} simulations",
            f"workers      : {workers.simulation} simulation, {workers.ml} ML, on {where}",
            f"run dir      : {self.run_dir} (database {self.database})",
        ]
        if workers.redis is not None and not workers.local:
            simulate = "steersman.apps.moldesign.tasks:simulate"
            if self.simulator is not None:
                # Workers import a module-level function called simulate.
                simulate = f"{self.simulator.__module__}:simulate"
            start = f"steersman worker --redis {workers.redis} --namespace {workers.namespace}"
            lines += [
                "start the workers on any host that reaches Redis:",
                f"  {start} --queues simulate --concurrency {workers.simulation} "
                f"--method {simulate}",
                f"  {start} --queues ml --concurrency {workers.ml} "
                "--method steersman.apps.moldesign.tasks:train "
                "--method steersman.apps.moldesign.tasks:infer",
            ]
        return "\n".join(lines)


def _bad(name: str, expected: str, got: Any) -> None:
    raise SpecError(f"spec.{name}: expected {expected}, got {got!r}")


def load_spec(target: str) -> Spec:
    """Load ``path/to/spec.py:name``; a missing file, module error or attribute is one
    clear :class:`SpecError`."""
    path_text, _, name = target.rpartition(":")
    if not path_text or not name:
        raise SpecError(f"expected path/to/spec.py:name, got {target!r}")
    path = Path(path_text)
    if not path.is_file():
        raise SpecError(f"no spec file at {path}")
    # The spec is imported under its file's name with its directory on the path (and on
    # PYTHONPATH, which worker processes inherit), so classes it defines unpickle there.
    module_name = path.stem
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) != str(
        path.resolve()
    ):
        raise SpecError(f"a module named {module_name!r} is already imported: rename {path.name}")
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if directory not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([directory, *filter(None, paths)])
    loader = importlib.util.spec_from_file_location(module_name, path.resolve())
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except SpecError as error:
        raise SpecError(f"{path}: {error}") from None
    except Exception as error:
        raise SpecError(f"{path} failed to load: {type(error).__name__}: {error}") from None
    spec = getattr(module, name, None)
    if spec is None:
        raise SpecError(f"{path} has no attribute {name!r}")
    if not isinstance(spec, Spec):
        raise SpecError(f"{path}:{name} is a {type(spec).__name__}, expected a Spec")
    return spec
