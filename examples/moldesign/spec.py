"""Find the molecules of 1,000 from QM9 with the highest adiabatic ionization potential
(GFN2-xTB), simulating a fraction of them.

Run it with:  steersman run examples/moldesign/spec.py:spec
Check it first with:  steersman run examples/moldesign/spec.py:spec --dry-run
"""

from pathlib import Path

from steersman.apps.moldesign.recipes import IonizationPotential
from steersman.apps.moldesign.scorers import FittedTanimotoDescriptorGP
from steersman.apps.moldesign.selectors import EISelector
from steersman.apps.moldesign.spec import Spec, Starter, Workers

HERE = Path(__file__).resolve().parent

spec = Spec(
    search_space=HERE / "qm9-1000.smi",
    recipes=[IonizationPotential(level="gfn2", vertical=False)],
    # Tanimoto kernel on fingerprints, alone or averaged with one on RDKit descriptors: the
    # kernel, its length scale and the noise are fitted to the data at every retraining.
    scorer=FittedTanimotoDescriptorGP(),
    # Expected improvement over the third best value measured: aims at the best few.
    selector=EISelector(incumbent_rank=3),
    starter=Starter(count=8, how="random", seed=0),
    num_to_run=150,
    workers=Workers(simulation=2, ml=1),
    run_dir="runs/moldesign",
)

# The short version `make demo` runs: the same search with a budget of 40 simulations.
demo = Spec(
    search_space=spec.search_space,
    recipes=spec.recipes,
    scorer=spec.scorer,
    selector=spec.selector,
    starter=spec.starter,
    num_to_run=40,
    workers=spec.workers,
    run_dir="runs/demo",
)
