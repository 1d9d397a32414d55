"""Surrogate models that predict a property of molecules from their SMILES strings.

A surrogate stands in for an expensive simulation: trained on the molecules simulated so far,
it predicts the property for every molecule of the search space in seconds, and a
:mod:`~steersman.apps.moldesign.selectors` selector uses those predictions to decide what to
simulate next. Three pieces work together:

*Featurizers* turn a list of SMILES into a matrix with one row per molecule.
:class:`MorganFingerprints` gives 0/1 bits that say which circular substructures a molecule
contains; :class:`RDKitDescriptors` gives a few dozen whole-molecule numbers (weight, polar
surface, ring counts, ...). Any object with a ``name`` and a ``__call__(smiles) -> array``
will do (see :class:`Featurizer`). A SMILES that RDKit cannot parse gets a row of zeros rather
than failing the whole batch, so one bad entry in a search space of a million molecules costs
one meaningless prediction, not the run.

*Scorers* learn from a feature matrix ``X`` and targets ``y``. :meth:`Scorer.fit` returns a
fitted **copy** and leaves the scorer it was called on untouched, so one unfitted template can
be sent to a worker again and again. :meth:`Scorer.predict` returns a mean and a standard
deviation for each row; the standard deviation is what lets a selector trade exploiting good
predictions against exploring uncertain ones. To plug in another model, subclass
:class:`Scorer` and implement ``_fit`` and ``_predict``.

*Tasks* :func:`train`, :func:`infer` and :func:`infer_features` are plain functions meant to be
submitted to machine-learning workers; their inputs and outputs pickle. :class:`FeatureCache`
featurizes a large search space once per run directory so that repeated inference only pays
for the model.

RDKit is imported when a featurizer first needs it, so this module (and the selectors that use
:func:`tanimoto_similarity`) loads in processes that never parse a molecule.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import operator
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.neighbors import KNeighborsRegressor
from sklearn.preprocessing import StandardScaler

__all__ = [
    "DEFAULT_DESCRIPTORS",
    "GP_DESCRIPTORS",
    "Bootstrap",
    "FeatureCache",
    "FeatureRows",
    "Featurizer",
    "FingerprintsWithDescriptors",
    "FittedTanimotoDescriptorGP",
    "FittedTanimotoGP",
    "GPRScorer",
    "KNNScorer",
    "MorganFingerprints",
    "RDKitDescriptors",
    "RandomForestScorer",
    "Scorer",
    "TanimotoGP",
    "infer",
    "infer_features",
    "tanimoto_similarity",
    "train",
]

CHUNK_ROWS = 10_000
"""Rows featurized or predicted at a time: bounds memory whatever the size of the space."""


# ============================================================================ featurizers
class Featurizer(Protocol):
    """What a scorer needs from a featurizer: a ``name`` and a call from SMILES to features.

    ``name`` must change whenever the features would (different radius, different descriptor
    list, ...): :class:`FeatureCache` uses it to name its files. The call returns one row per
    SMILES, in order, and must not raise for a SMILES it cannot parse.
    """

    name: str

    def __call__(self, smiles: Sequence[str]) -> np.ndarray: ...


def _parse(smiles: Sequence[str]) -> list[Any]:
    """RDKit molecules for ``smiles``, ``None`` where a SMILES does not parse.

    RDKit's complaints about bad SMILES are silenced: the caller turns ``None`` into a row of
    zeros, and a million-molecule batch must not flood the log.
    """
    from rdkit import Chem
    from rdkit.rdBase import BlockLogs

    mols = []
    with BlockLogs():
        for i, smi in enumerate(smiles):
            if not isinstance(smi, str):
                raise TypeError(f"SMILES must be strings; item {i} is {type(smi).__name__}")
            mols.append(Chem.MolFromSmiles(smi))
    return mols


class MorganFingerprints:
    """Morgan (ECFP-like) fingerprints: entry ``j`` is 1 if the molecule contains a circular
    substructure that hashes to ``j`` — or, with ``counts=True``, how many times (up to 255).

    ``radius`` is how many bonds out from each atom a substructure reaches (2 is the usual
    ECFP4), ``n_bits`` the length of the vector. The result is a ``uint8`` matrix of shape
    ``(len(smiles), n_bits)``; an unparseable SMILES gets a row of zeros. Counts tell apart
    molecules that hold the same groups in different numbers; with the Tanimoto kernel they
    found the best molecules of the QM9 example in fewer simulations than bits did
    (docs/benchmarks.md).

    Several radii, ``radius=(1, 2, 3)``, give one block of ``n_bits`` columns per radius, side
    by side (``blocks`` says how many), from one parse of each SMILES: a
    :class:`FittedTanimotoGP` chooses among them by the evidence of the data.
    """

    def __init__(
        self, radius: int | Sequence[int] = 2, n_bits: int = 2048, counts: bool = False
    ) -> None:
        try:
            single = not hasattr(radius, "__iter__")
            radii = tuple(operator.index(r) for r in ((radius,) if single else radius))
        except TypeError:
            raise ValueError(
                f"radius must be an integer or a list of them, got {radius!r}"
            ) from None
        if not radii or any(r < 0 for r in radii):
            raise ValueError(f"radius must be 0 or more (or a list of such), got {radius!r}")
        if n_bits < 1:
            raise ValueError(f"n_bits must be 1 or more, got {n_bits}")
        self.radius: int | tuple[int, ...] = radii[0] if single else radii
        self.radii = radii
        self.blocks = len(radii)
        """Blocks of ``n_bits`` columns, one per radius."""
        self.n_bits = int(n_bits)
        self.counts = bool(counts)
        radii_name = "+".join(map(str, radii))
        self.name = f"morgan-r{radii_name}-{self.n_bits}" + ("-counts" if self.counts else "")
        self._generators: list[Any] | None = None  # built on first use; they do not pickle

    def __call__(self, smiles: Sequence[str]) -> np.ndarray:
        if self._generators is None:
            from rdkit.Chem import rdFingerprintGenerator

            self._generators = [
                rdFingerprintGenerator.GetMorganGenerator(radius=r, fpSize=self.n_bits)
                for r in self.radii
            ]
        n = self.n_bits
        out = np.zeros((len(smiles), n * self.blocks), dtype=np.uint8)
        for i, mol in enumerate(_parse(smiles)):
            if mol is None:
                continue
            for b, generator in enumerate(self._generators):
                if self.counts:
                    row = np.minimum(generator.GetCountFingerprintAsNumPy(mol), 255)
                else:
                    row = generator.GetFingerprintAsNumPy(mol)
                out[i, b * n : (b + 1) * n] = row
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_generators"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickles made before several radii existed hold one radius and one generator.
        state.pop("_generator", None)
        radius = state.get("radius", 2)
        state.setdefault("radii", (radius,) if isinstance(radius, int) else tuple(radius))
        state.setdefault("blocks", len(state["radii"]))
        state["_generators"] = None
        self.__dict__.update(state)

    def __repr__(self) -> str:
        counts = ", counts=True" if self.counts else ""
        return f"MorganFingerprints(radius={self.radius}, n_bits={self.n_bits}{counts})"


DEFAULT_DESCRIPTORS: tuple[str, ...] = (
    # size and composition
    "MolWt",
    "HeavyAtomMolWt",
    "HeavyAtomCount",
    "NumValenceElectrons",
    "NumHeteroatoms",
    "NOCount",
    "NHOHCount",
    "FractionCSP3",
    # polarity, solubility, hydrogen bonding
    "MolLogP",
    "MolMR",
    "TPSA",
    "LabuteASA",
    "NumHDonors",
    "NumHAcceptors",
    "MaxPartialCharge",
    "MinPartialCharge",
    "MaxAbsEStateIndex",
    "MinEStateIndex",
    # rings and flexibility
    "RingCount",
    "NumAromaticRings",
    "NumAliphaticRings",
    "NumSaturatedRings",
    "NumRotatableBonds",
    "NumSpiroAtoms",
    "NumBridgeheadAtoms",
    # topology (shape and branching of the molecular graph)
    "BertzCT",
    "BalabanJ",
    "HallKierAlpha",
    "Kappa1",
    "Kappa2",
    "Kappa3",
    "Chi0v",
    "Chi1v",
    "Chi2v",
    "Chi3v",
    # drug-likeness summary
    "qed",
)
"""RDKit 2D descriptors used when :class:`RDKitDescriptors` is given no list: cheap to compute
and spread over size, polarity, rings and graph shape."""

GP_DESCRIPTORS: tuple[str, ...] = tuple(name for name in DEFAULT_DESCRIPTORS if name != "qed")
"""The descriptors :class:`FingerprintsWithDescriptors` computes by default: all of
:data:`DEFAULT_DESCRIPTORS` but ``qed``, a drug-likeness score and the slowest of them by far,
which made no difference to the QM9 example's searches."""


class RDKitDescriptors:
    """A float matrix of RDKit 2D descriptors, one column per name in ``names``.

    ``names`` are keys of ``rdkit.Chem.Descriptors.descList`` (default
    :data:`DEFAULT_DESCRIPTORS`). A descriptor that fails or gives NaN or infinity for a
    molecule is recorded as 0, and an unparseable SMILES gets a row of zeros. The columns have
    very different scales, so models on top of them should standardize (as
    :class:`GPRScorer` does).
    """

    def __init__(self, names: Sequence[str] | None = None) -> None:
        from rdkit.Chem import Descriptors

        self.names = tuple(DEFAULT_DESCRIPTORS if names is None else names)
        if not self.names:
            raise ValueError("names must hold at least one descriptor name")
        known = {name for name, _ in Descriptors.descList}
        unknown = [n for n in self.names if n not in known]
        if unknown:
            raise ValueError(
                f"unknown RDKit descriptors {unknown}; see rdkit.Chem.Descriptors.descList"
            )
        digest = hashlib.sha256(",".join(self.names).encode()).hexdigest()[:8]
        self.name = f"rdkit{len(self.names)}-{digest}"

    def __call__(self, smiles: Sequence[str]) -> np.ndarray:
        from rdkit.Chem import Descriptors

        table = dict(Descriptors.descList)
        functions = [table[n] for n in self.names]
        out = np.zeros((len(smiles), len(functions)), dtype=np.float64)
        for i, mol in enumerate(_parse(smiles)):
            if mol is None:
                continue
            for j, function in enumerate(functions):
                try:
                    out[i, j] = function(mol)
                except Exception:  # RDKit raises on rare molecules; one value must not fail all
                    out[i, j] = np.nan
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0, copy=False)

    def __repr__(self) -> str:
        if self.names == DEFAULT_DESCRIPTORS:
            return "RDKitDescriptors()"
        return f"RDKitDescriptors(names={list(self.names)!r})"


class FingerprintsWithDescriptors:
    """Morgan fingerprints and RDKit descriptors of each molecule, side by side in one row.

    The first columns are those of ``fingerprints`` (default Morgan count fingerprints at
    radii 1, 2 and 3, as :class:`FittedTanimotoGP` uses; ``blocks`` is theirs); the last
    :attr:`descriptor_columns` hold the values of ``descriptors`` (default
    :data:`GP_DESCRIPTORS`) as float32, 4 bytes each. The whole matrix is ``uint8``, so
    a cached search space costs a few bytes per molecule more than the fingerprints alone
    instead of four times as much as a float matrix would; :meth:`split` gives the two parts
    back. Made for :class:`FittedTanimotoDescriptorGP`.
    """

    def __init__(
        self,
        fingerprints: MorganFingerprints | None = None,
        descriptors: RDKitDescriptors | None = None,
    ) -> None:
        if fingerprints is None:
            fingerprints = MorganFingerprints(radius=(1, 2, 3), counts=True)
        if descriptors is None:
            descriptors = RDKitDescriptors(GP_DESCRIPTORS)
        if not isinstance(fingerprints, MorganFingerprints):
            raise ValueError(
                f"fingerprints must be a MorganFingerprints, got {type(fingerprints).__name__}"
            )
        if not isinstance(descriptors, RDKitDescriptors):
            raise ValueError(
                f"descriptors must be an RDKitDescriptors, got {type(descriptors).__name__}"
            )
        self.fingerprints = fingerprints
        self.descriptors = descriptors
        self.blocks = fingerprints.blocks
        """Blocks of fingerprint columns, one per radius."""
        self.n_descriptors = len(descriptors.names)
        self.descriptor_columns = 4 * self.n_descriptors
        """Trailing ``uint8`` columns that hold the descriptors (4 bytes each)."""
        self.name = f"{fingerprints.name}+{descriptors.name}"

    def __call__(self, smiles: Sequence[str]) -> np.ndarray:
        bits = np.asarray(self.fingerprints(smiles), dtype=np.uint8)
        values = np.ascontiguousarray(self.descriptors(smiles), dtype="<f4")
        tail = values.view(np.uint8).reshape(len(bits), self.descriptor_columns)
        return np.hstack([bits, tail])

    def split(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fingerprint columns of ``X`` (a view) and its descriptors as float64."""
        X = np.asarray(X)
        if X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] <= self.descriptor_columns:
            raise ValueError(
                f"expected the uint8 matrix this featurizer makes, with more than "
                f"{self.descriptor_columns} columns; got {X.dtype} of shape {X.shape}"
            )
        tail = np.ascontiguousarray(X[:, -self.descriptor_columns :])
        return X[:, : -self.descriptor_columns], tail.view("<f4").astype(np.float64)

    def __repr__(self) -> str:
        return (
            f"FingerprintsWithDescriptors(fingerprints={self.fingerprints!r}, "
            f"descriptors={self.descriptors!r})"
        )


def tanimoto_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tanimoto similarity of each row of ``a`` with each row of ``b``: shape (len(a), len(b)).

    For 0/1 fingerprints this is the number of bits two molecules share divided by the number
    set in either: 1 for identical fingerprints, 0 for nothing in common. It is computed as
    ``<a,b> / (<a,a> + <b,b> - <a,b>)`` with matrix products, which also gives the usual
    generalization for count fingerprints. Products run in float32, exact for counts below
    2**24. Two all-zero rows are called identical (similarity 1).
    """
    a32 = _rows_float32(a)
    b32 = _rows_float32(b)
    return _tanimoto(a32, b32, _squared_norms(a32), _squared_norms(b32))


def _rows_float32(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[np.newaxis, :]
    if arr.ndim != 2:
        raise ValueError(f"expected a 1-D or 2-D fingerprint array, got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _squared_norms(x32: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x32, x32)


def _tanimoto(a32: np.ndarray, b32: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """Tanimoto matrix from float32 rows and their precomputed squared norms."""
    dot = a32 @ b32.T
    denominator = na[:, np.newaxis] + nb[np.newaxis, :] - dot
    similarity = np.ones(dot.shape, dtype=np.float64)
    np.divide(dot, denominator, out=similarity, where=denominator > 0)
    return similarity


# =============================================================================== scorers
def _as_matrix(X: Any, what: str = "X") -> np.ndarray:
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (molecules x features), got shape {arr.shape}")
    return arr


def _as_targets(y: Any, n_rows: int) -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 1 or len(arr) != n_rows:
        raise ValueError(f"y must be 1-D with one value per row of X ({n_rows}), got {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise ValueError(
            f"y holds NaN or infinity at rows {bad[:10].tolist()}; "
            "drop failed simulations before training"
        )
    return arr


class Scorer:
    """A model that learns ``y`` from features and predicts a mean and a standard deviation.

    Fitting never changes the scorer it is called on: ``fitted = scorer.fit(X, y)`` returns a
    trained deep copy. Use the returned object; calling :meth:`predict` on the unfitted
    original raises. Prediction runs in chunks of :attr:`chunk_size` rows, so a model never
    sees more than that many candidates at once and memory stays bounded.

    To bring your own model, subclass and implement the two hooks; the base class handles
    copying, input checks and chunking::

        class RidgeScorer(Scorer):
            def __init__(self, alpha=1.0, featurizer=None):
                super().__init__(featurizer)
                self.alpha = alpha

            def _fit(self, X, y):  # runs on the copy: store what you learn on self
                self.model_ = sklearn.linear_model.Ridge(alpha=self.alpha).fit(X, y)

            def _predict(self, X):  # at most chunk_size rows
                return self.model_.predict(X), np.zeros(len(X))

    Keep constructor arguments as attributes of the same name: ``repr`` shows them.
    """

    chunk_size: int = CHUNK_ROWS
    is_fitted: bool = False
    n_features: int | None = None
    """Number of feature columns seen by :meth:`fit`; ``predict`` insists on the same."""

    def __init__(self, featurizer: Featurizer | None = None) -> None:
        self.featurizer: Featurizer = featurizer if featurizer is not None else MorganFingerprints()

    def fit(self, X: np.ndarray, y: np.ndarray) -> Self:
        """Return a copy of this scorer trained on features ``X`` (n, d) and targets ``y`` (n,)."""
        X = _as_matrix(X)
        if len(X) == 0:
            raise ValueError("cannot fit on zero molecules")
        y = _as_targets(y, len(X))
        fitted = copy.deepcopy(self)
        fitted._fit(X, y)
        fitted.n_features = X.shape[1]
        fitted.is_fitted = True
        return fitted

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean and standard deviation for each row of ``X``, each of shape (n,).

        The standard deviation is 0 for models that have no notion of uncertainty.
        """
        if not self.is_fitted:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted; fit() returns a fitted copy and leaves "
                "the original unchanged, so predict with what fit() returned"
            )
        X = _as_matrix(X)
        if X.shape[1] != self.n_features:
            raise ValueError(
                f"X has {X.shape[1]} feature columns but the scorer was fitted on "
                f"{self.n_features}; featurize with the same featurizer"
            )
        n = len(X)
        mean = np.empty(n, dtype=np.float64)
        std = np.empty(n, dtype=np.float64)
        for start in range(0, n, self.chunk_size):
            stop = min(start + self.chunk_size, n)
            chunk_mean, chunk_std = (np.ravel(a) for a in self._predict(X[start:stop]))
            if len(chunk_mean) != stop - start or len(chunk_std) != stop - start:
                raise ValueError(
                    f"{type(self).__name__}._predict returned {len(chunk_mean)} means and "
                    f"{len(chunk_std)} stds for {stop - start} rows; expected one of each per row"
                )
            mean[start:stop] = chunk_mean
            std[start:stop] = chunk_std
        np.maximum(std, 0.0, out=std)
        return mean, std

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        """Learn from ``X`` and ``y``, storing the result on ``self`` (a fresh copy)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _fit(X, y)")

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation for a chunk of at most :attr:`chunk_size` rows."""
        raise NotImplementedError(f"{type(self).__name__} must implement _predict(X)")

    def __repr__(self) -> str:
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        shown = [f"{n}={getattr(self, n)!r}" for n in names if hasattr(self, n)]
        return f"{type(self).__name__}({', '.join(shown)})"


class KNNScorer(Scorer):
    """Average of the targets of the ``n_neighbors`` most similar training molecules.

    Similarity is Jaccard (Tanimoto) on boolean fingerprints; the standard deviation is the
    spread of those neighbours' targets, so a candidate whose neighbours disagree is marked
    uncertain. With fewer training molecules than ``n_neighbors``, all of them are used.

    The neighbours are those scikit-learn's ``KNeighborsRegressor(metric="jaccard")`` finds,
    but the Jaccard distances (1 - Tanimoto) are computed here with matrix products and handed
    to it precomputed: scikit-learn's own Jaccard loop is ten times slower or more (about a
    minute for 100,000 candidates against 200 training molecules).
    """

    def __init__(self, n_neighbors: int = 5, featurizer: Featurizer | None = None) -> None:
        super().__init__(featurizer)
        if n_neighbors < 1:
            raise ValueError(f"n_neighbors must be 1 or more, got {n_neighbors}")
        self.n_neighbors = n_neighbors

    def _distances(self, X: np.ndarray) -> np.ndarray:
        bits = (X != 0).astype(np.float32)
        return 1.0 - _tanimoto(bits, self.X_train_, _squared_norms(bits), self.norms_train_)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X_train_ = (X != 0).astype(np.float32)
        self.norms_train_ = _squared_norms(self.X_train_)
        k = min(self.n_neighbors, len(X))
        self.model_ = KNeighborsRegressor(n_neighbors=k, metric="precomputed")
        self.model_.fit(self._distances(X), y)
        self.y_train_ = y

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        neighbours = self.model_.kneighbors(self._distances(X), return_distance=False)
        targets = self.y_train_[neighbours]
        return targets.mean(axis=1), targets.std(axis=1)


class GPRScorer(Scorer):
    """scikit-learn Gaussian process on standardized features (RDKit descriptors by default).

    The kernel is ``constant * Matern(nu) + white noise``; its length scale, amplitude and
    noise level are fitted by maximizing the marginal likelihood (restarted ``n_restarts``
    times from random starts drawn with ``seed``). Targets are normalized, so ``y`` may be in
    any unit. Fitting costs O(n^3) in the number of training molecules: fine for a few
    thousand. scikit-learn's warnings that a hyperparameter ended at a bound are silenced:
    with deterministic simulations the noise level routinely ends at its lower bound.
    """

    def __init__(
        self,
        featurizer: Featurizer | None = None,
        *,
        nu: float = 2.5,
        n_restarts: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(featurizer if featurizer is not None else RDKitDescriptors())
        self.nu = nu
        self.n_restarts = n_restarts
        self.seed = seed

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.scaler_ = StandardScaler().fit(X.astype(np.float64))
        n_features = X.shape[1]
        kernel = ConstantKernel(1.0, (1e-3, 1e4)) * Matern(
            length_scale=np.sqrt(n_features), length_scale_bounds=(1e-2, 1e4), nu=self.nu
        ) + WhiteKernel(noise_level=1e-2, noise_level_bounds=(1e-8, 1e1))
        self.model_ = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            n_restarts_optimizer=self.n_restarts,
            random_state=self.seed,
        )
        with warnings.catch_warnings():
            # Simulations are deterministic, so the fitted noise often sits at its lower bound;
            # scikit-learn's warning about that would repeat at every retraining.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit(self.scaler_.transform(X.astype(np.float64)), y)

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z = self.scaler_.transform(X.astype(np.float64))
        return self.model_.predict(Z, return_std=True)


class RandomForestScorer(Scorer):
    """scikit-learn random forest; the standard deviation is the spread across its trees.

    Each tree sees a bootstrap resample of the training molecules, so where the trees disagree
    the data say little. ``n_jobs`` is handed to scikit-learn (``None``: one core).
    """

    def __init__(
        self,
        n_estimators: int = 100,
        featurizer: Featurizer | None = None,
        *,
        seed: int = 0,
        n_jobs: int | None = None,
    ) -> None:
        super().__init__(featurizer)
        if n_estimators < 1:
            raise ValueError(f"n_estimators must be 1 or more, got {n_estimators}")
        self.n_estimators = n_estimators
        self.seed = seed
        self.n_jobs = n_jobs

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.model_ = RandomForestRegressor(
            n_estimators=self.n_estimators, random_state=self.seed, n_jobs=self.n_jobs
        )
        self.model_.fit(X.astype(np.float32), y)

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X32 = X.astype(np.float32)
        per_tree = np.stack([tree.predict(X32) for tree in self.model_.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)


class TanimotoGP(Scorer):
    """Exact Gaussian process with the Tanimoto kernel on fingerprints, written with numpy.

    The prior says: property = ``mean(y)`` + a function whose covariance between two
    molecules is ``var(y) * tanimoto(a, b)`` (``a·b / (|a|² + |b|² - a·b)``, on Morgan count
    fingerprints unless another featurizer is given), so molecules sharing most of their
    substructures have similar values. Observations carry independent noise of variance
    ``noise * var(y)`` (``noise`` is relative to the signal, so it needs no rescaling when
    the unit of ``y`` changes). There is no hyperparameter fitting, which makes training a
    single Cholesky factorization and prediction two matrix products per chunk of candidates:
    100,000 molecules against a few hundred training points take a second or two.

    The standard deviation is that of the latent property (noise excluded): it shrinks to
    about ``sqrt(noise * var(y))`` at a training molecule and grows to ``std(y)`` for
    molecules unlike any seen.
    """

    def __init__(self, noise: float = 1e-2, featurizer: Featurizer | None = None) -> None:
        # Count fingerprints by default: the kernel then also weighs how often a group occurs.
        super().__init__(featurizer if featurizer is not None else MorganFingerprints(counts=True))
        if not noise >= 0:
            raise ValueError(f"noise must be 0 or more, got {noise}")
        self.noise = noise

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.X_train_ = X.astype(np.float32)
        self.norms_train_ = _squared_norms(self.X_train_)
        self.y_mean_ = float(y.mean())
        variance = float(y.var())
        # One molecule, or all targets equal: no spread to learn a scale from; use 1.
        self.signal_variance_ = variance if variance > 0 else 1.0
        K = _tanimoto(self.X_train_, self.X_train_, self.norms_train_, self.norms_train_)
        K[np.diag_indices_from(K)] += self.noise
        self.cholesky_ = _cholesky_with_jitter(K)
        self.alpha_ = cho_solve((self.cholesky_, True), y - self.y_mean_)

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X32 = X.astype(np.float32)
        Ks = _tanimoto(X32, self.X_train_, _squared_norms(X32), self.norms_train_)
        mean = self.y_mean_ + Ks @ self.alpha_
        V = solve_triangular(self.cholesky_, Ks.T, lower=True, check_finite=False)
        variance = self.signal_variance_ * (1.0 - np.einsum("ij,ij->j", V, V))
        return mean, np.sqrt(np.clip(variance, 0.0, None))


NOISE_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
"""Relative noise levels :class:`FittedTanimotoGP` chooses among."""


class FittedTanimotoGP(TanimotoGP):
    """A :class:`TanimotoGP` that fits its kernel and noise to the data at every training.

    The features are Morgan count fingerprints at radii 1, 2 and 3 unless another featurizer
    is given (one with ``blocks`` > 1 holds blocks of equal width side by side). The
    candidate kernels are the Tanimoto kernel on each block alone and the mean of them all;
    the candidate noises are ``noises`` (relative to the signal, as in :class:`TanimotoGP`).
    For every pair the signal variance has a closed-form best value, and the pair with the
    highest log marginal likelihood — the probability of the measured values under the
    model, the usual way to choose a GP's settings without a held-out set — is kept:
    ``kernel_`` (block indices) and ``noise_`` say which. Fitting costs one Cholesky
    factorization per pair: about 30 ms at 150 molecules for 4 kernels and 6 noises.

    On the QM9 example this found 9 of the 10 highest ionization potentials in fewer
    simulations than the fixed GP, on seeds it was not tuned on (docs/benchmarks.md).
    """

    def __init__(
        self,
        featurizer: Featurizer | None = None,
        noises: Sequence[float] = NOISE_GRID,
    ) -> None:
        if featurizer is None:
            featurizer = MorganFingerprints(radius=(1, 2, 3), counts=True)
        noises = tuple(noises)
        if not noises or any(not n >= 0 for n in noises):
            raise ValueError(f"noises must be a non-empty list of numbers >= 0, got {noises!r}")
        super().__init__(noise=min(noises), featurizer=featurizer)
        self.noises = tuple(float(n) for n in noises)

    def _blocks(self, X: np.ndarray, which: Iterable[int] | None = None) -> dict[int, Any]:
        """The feature blocks ``which`` (default all) of ``X`` as float32, with their squared
        norms: ``{block: (rows, norms)}``."""
        n_blocks = getattr(self.featurizer, "blocks", 1) or 1
        if X.shape[1] % n_blocks:
            raise ValueError(
                f"{X.shape[1]} feature columns do not split into {n_blocks} equal blocks"
            )
        width = X.shape[1] // n_blocks
        out = {}
        for b in range(n_blocks) if which is None else which:
            rows = X[:, b * width : (b + 1) * width].astype(np.float32)
            out[b] = (rows, _squared_norms(rows))
        return out

    @staticmethod
    def _kernel_matrix(A: dict, B: dict, kernel: tuple[int, ...]) -> np.ndarray:
        """The mean over the blocks of ``kernel`` of their Tanimoto similarities."""
        total = None
        for b in kernel:
            similarity = _tanimoto(A[b][0], B[b][0], A[b][1], B[b][1])
            total = similarity if total is None else total + similarity
        return total / len(kernel) if len(kernel) > 1 else total

    @staticmethod
    def candidate_kernels(n_blocks: int) -> list[tuple[int, ...]]:
        """Each block alone, then all blocks averaged (one kernel when there is one block)."""
        if n_blocks == 1:
            return [(0,)]
        return [(b,) for b in range(n_blocks)] + [tuple(range(n_blocks))]

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        blocks = self._blocks(X)
        self.y_mean_ = float(y.mean())
        residual = y - self.y_mean_
        best = None
        self.evidence_: dict[tuple[tuple[int, ...], float], float] = {}
        """Log marginal likelihood of every (kernel, noise) tried at the last fit."""
        for kernel in self.candidate_kernels(len(blocks)):
            K = self._kernel_matrix(blocks, blocks, kernel)
            for noise in self.noises:
                evidence, L, alpha, scale = _evidence(K, noise, residual)
                self.evidence_[kernel, noise] = evidence
                if best is None or evidence > best[0]:
                    best = (evidence, kernel, noise, L, alpha, scale)
        _, self.kernel_, self.noise_, self.cholesky_, self.alpha_, self.signal_variance_ = best
        self.noise = self.noise_
        self.train_blocks_ = {b: blocks[b] for b in self.kernel_}

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Ks = self._kernel_matrix(self._blocks(X, self.kernel_), self.train_blocks_, self.kernel_)
        mean = self.y_mean_ + Ks @ self.alpha_
        V = solve_triangular(self.cholesky_, Ks.T, lower=True, check_finite=False)
        variance = self.signal_variance_ * (1.0 - np.einsum("ij,ij->j", V, V))
        return mean, np.sqrt(np.clip(variance, 0.0, None))

    def __repr__(self) -> str:
        return f"FittedTanimotoGP(featurizer={self.featurizer!r})"


def _evidence(
    K: np.ndarray, noise: float, residual: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Log marginal likelihood of ``residual`` under ``scale * (K + noise I)``, with the best
    ``scale``: ``(evidence, cholesky factor, (K + noise I)^-1 residual, scale)``."""
    # y - mean ~ N(0, scale * (K + noise I)): the mean and the doubt of a prediction need
    # (K + noise I)^-1 r and the factor; scale has a closed form.
    n = len(residual)
    L = _cholesky_with_jitter(K + noise * np.eye(n))
    alpha = cho_solve((L, True), residual)
    # All targets equal (or one molecule): no spread to learn a scale from; use 1, as
    # TanimotoGP does, so the model still doubts what it has not seen.
    scale = float(residual @ alpha) / n if np.any(residual != 0) else 1.0
    evidence = -0.5 * n * (1.0 + np.log(2 * np.pi * scale)) - float(np.log(np.diag(L)).sum())
    return evidence, L, alpha, scale


LENGTHSCALE_GRID: tuple[float, ...] = (0.5, 1.0, 2.0)
"""Descriptor length scales :class:`FittedTanimotoDescriptorGP` chooses among, in units of
the square root of the number of descriptors."""


class FittedTanimotoDescriptorGP(FittedTanimotoGP):
    """A :class:`FittedTanimotoGP` that may also compare molecules by RDKit descriptors.

    Fingerprints say which groups a molecule holds; whole-molecule descriptors (size,
    composition, polarity, rings, graph shape: :data:`GP_DESCRIPTORS`) say what they add
    up to, which two molecules with few groups in common can share. The features are those
    of a :class:`FingerprintsWithDescriptors` (the default one unless another is given). The
    candidate kernels are those of :class:`FittedTanimotoGP` and each of them averaged with a
    squared-exponential kernel on the descriptors, ``exp(-|a - b|^2 / (2 l^2 d))``, for each
    ``l`` in ``lengthscales`` (``d`` the number of descriptors, each standardized by the mean
    and standard deviation of the training molecules). As in the parent, every kernel is
    tried with every noise and the pair with the highest log marginal likelihood is kept;
    ``lengthscale_`` is ``None`` when the fingerprints alone won. The average has equal
    weights: letting the evidence choose the weight as well did worse on the QM9 example.

    Fitting costs about four times the parent's (4 kernels x 4 variants x 6 noises);
    prediction adds a product with a ``d``-column matrix, little next to the fingerprints
    (100,000 molecules in under 2 s on one core). Featurizing is slower: about 1 ms a
    molecule, paid once per space (the ML workers share it, and the feature cache keeps it).
    On the QM9 example, with two simulations pending, it found 9 of the 10 highest
    ionization potentials in about 65 simulations where :class:`FittedTanimotoGP` needed
    about 105, and about 60 with ``EISelector(incumbent_rank=3)``, on seeds it was not
    chosen on (``bench/moldesign_offline.py``).
    """

    def __init__(
        self,
        featurizer: FingerprintsWithDescriptors | None = None,
        noises: Sequence[float] = NOISE_GRID,
        lengthscales: Sequence[float] = LENGTHSCALE_GRID,
    ) -> None:
        if featurizer is None:
            featurizer = FingerprintsWithDescriptors()
        if not isinstance(featurizer, FingerprintsWithDescriptors):
            raise ValueError(
                "featurizer must be a FingerprintsWithDescriptors (fingerprints and "
                f"descriptors in one matrix), got {type(featurizer).__name__}"
            )
        lengthscales = tuple(lengthscales)
        if not lengthscales or any(not (0 < s < np.inf) for s in lengthscales):
            raise ValueError(
                f"lengthscales must be a non-empty list of numbers > 0, got {lengthscales!r}"
            )
        super().__init__(featurizer=featurizer, noises=noises)
        self.lengthscales = tuple(float(s) for s in lengthscales)

    def _blocks(self, X: np.ndarray, which: Iterable[int] | None = None) -> dict[int, Any]:
        fingerprints, _ = self.featurizer.split(X)
        return super()._blocks(fingerprints, which)

    def _descriptors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardized descriptors of ``X`` and their squared norms."""
        _, values = self.featurizer.split(X)
        Z = (values - self.descriptor_mean_) / self.descriptor_std_
        return Z, np.einsum("ij,ij->i", Z, Z)

    def _blend(self, similarity: np.ndarray, distances: np.ndarray, lengthscale: float | None):
        """The Tanimoto ``similarity`` alone, or averaged with the squared-exponential kernel
        of squared descriptor ``distances``."""
        if lengthscale is None:
            return similarity
        width = 2.0 * lengthscale**2 * len(self.descriptor_mean_)
        return 0.5 * (similarity + np.exp(-distances / width))

    @staticmethod
    def _squared_distances(A: tuple, B: tuple) -> np.ndarray:
        (a, na), (b, nb) = A, B
        return np.clip(na[:, np.newaxis] + nb[np.newaxis, :] - 2.0 * (a @ b.T), 0.0, None)

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        blocks = self._blocks(X)
        _, values = self.featurizer.split(X)
        self.descriptor_mean_ = values.mean(axis=0)
        spread = values.std(axis=0)
        self.descriptor_std_ = np.where(spread > 0, spread, 1.0)
        descriptors = self._descriptors(X)
        distances = self._squared_distances(descriptors, descriptors)
        self.y_mean_ = float(y.mean())
        residual = y - self.y_mean_
        best = None
        self.evidence_: dict[tuple[tuple[int, ...], float | None, float], float] = {}
        """Log marginal likelihood of every (kernel, length scale, noise) tried at the last
        fit; the length scale is ``None`` for the fingerprints alone."""
        for kernel in self.candidate_kernels(len(blocks)):
            similarity = self._kernel_matrix(blocks, blocks, kernel)
            for lengthscale in (None, *self.lengthscales):
                K = self._blend(similarity, distances, lengthscale)
                for noise in self.noises:
                    evidence, L, alpha, scale = _evidence(K, noise, residual)
                    self.evidence_[kernel, lengthscale, noise] = evidence
                    if best is None or evidence > best[0]:
                        best = (evidence, kernel, lengthscale, noise, L, alpha, scale)
        (_, self.kernel_, self.lengthscale_, self.noise_) = best[:4]
        self.cholesky_, self.alpha_, self.signal_variance_ = best[4:]
        self.noise = self.noise_
        self.train_blocks_ = {b: blocks[b] for b in self.kernel_}
        self.train_descriptors_ = descriptors

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Ks = self._kernel_matrix(self._blocks(X, self.kernel_), self.train_blocks_, self.kernel_)
        if self.lengthscale_ is not None:
            distances = self._squared_distances(self._descriptors(X), self.train_descriptors_)
            Ks = self._blend(Ks, distances, self.lengthscale_)
        mean = self.y_mean_ + Ks @ self.alpha_
        V = solve_triangular(self.cholesky_, Ks.T, lower=True, check_finite=False)
        variance = self.signal_variance_ * (1.0 - np.einsum("ij,ij->j", V, V))
        return mean, np.sqrt(np.clip(variance, 0.0, None))

    def __repr__(self) -> str:
        return (
            f"FittedTanimotoDescriptorGP(featurizer={self.featurizer!r}, "
            f"lengthscales={self.lengthscales!r})"
        )


def _cholesky_with_jitter(K: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of ``K``, adding growing diagonal jitter if ``K`` is singular.

    Needed when ``noise`` is 0 and two training molecules share a fingerprint.
    """
    jitter = 0.0
    for _ in range(7):
        try:
            return cholesky(K + jitter * np.eye(len(K)), lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            jitter = 1e-8 if jitter == 0.0 else jitter * 10
    raise np.linalg.LinAlgError("kernel matrix is not positive definite even with jitter 1e-2")


class Bootstrap(Scorer):
    """An ensemble of ``n_models`` copies of ``base``, each trained on a bootstrap resample.

    A bootstrap resample draws as many molecules as the training set, with replacement, so
    each member sees a slightly different data set. Where members agree, the data pin the
    prediction down; where they disagree, they do not. The prediction is the mean of the
    members' means; the variance adds the spread of those means to the average of the
    members' own variances (the law of total variance), so it works for bases with or
    without an uncertainty of their own.
    """

    def __init__(self, base: Scorer, n_models: int = 8, seed: int = 0) -> None:
        if n_models < 1:
            raise ValueError(f"n_models must be 1 or more, got {n_models}")
        super().__init__(base.featurizer)
        self.base = base
        self.n_models = n_models
        self.seed = seed

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        rng = np.random.default_rng(self.seed)
        n = len(X)
        self.members_ = []
        for _ in range(self.n_models):
            rows = rng.integers(0, n, size=n)
            self.members_.append(self.base.fit(X[rows], y[rows]))

    def _predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        predictions = [member.predict(X) for member in self.members_]
        means = np.stack([m for m, _ in predictions])
        stds = np.stack([s for _, s in predictions])
        variance = means.var(axis=0) + np.mean(stds**2, axis=0)
        return means.mean(axis=0), np.sqrt(variance)

    def __repr__(self) -> str:
        return f"Bootstrap(base={self.base!r}, n_models={self.n_models}, seed={self.seed})"


# ================================================================================= tasks
def train(scorer: Scorer, smiles: Sequence[str], y: Sequence[float]) -> Scorer:
    """Featurize ``smiles`` with the scorer's featurizer and return the fitted scorer.

    Meant to run as a task on a machine-learning worker: the input scorer is an unfitted (or
    previously fitted) template and is left unchanged; the result pickles and can be passed
    straight to :func:`infer`.
    """
    if len(smiles) != len(y):
        raise ValueError(f"got {len(smiles)} SMILES but {len(y)} targets")
    X = scorer.featurizer(list(smiles))
    return scorer.fit(X, np.asarray(y, dtype=np.float64))


def infer(scorer: Scorer, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation predicted by a fitted ``scorer`` for each SMILES.

    Featurizes and predicts chunk by chunk, so memory stays bounded for any number of
    molecules. When the same space is scored again and again, featurize it once with
    :class:`FeatureCache` and call :func:`infer_features` instead.
    """
    n = len(smiles)
    if n == 0:
        return np.empty(0), np.empty(0)
    means, stds = [], []
    for start in range(0, n, scorer.chunk_size):
        chunk = list(smiles[start : start + scorer.chunk_size])
        mean, std = scorer.predict(scorer.featurizer(chunk))
        means.append(mean)
        stds.append(std)
    return np.concatenate(means), np.concatenate(stds)


def infer_features(scorer: Scorer, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation predicted by a fitted ``scorer`` for pre-featurized rows."""
    return scorer.predict(X)


# ========================================================================= feature cache
def _smiles_digest(smiles: Sequence[str]) -> str:
    h = hashlib.sha256(f"{len(smiles)}\n".encode())
    for smi in smiles:
        h.update(smi.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class FeatureCache:
    """Features of a search space, computed once and kept as ``.npy`` files in ``directory``.

    The file is named from the featurizer's ``name`` and a hash of the SMILES list (the order
    matters), so a different space or featurizer never picks up stale features. 0/1 features
    such as fingerprints are stored bit-packed (``np.packbits``, eight times smaller; the
    file name then ends in ``.bits<columns>.npy``) and unpacked to a ``uint8`` matrix on
    load. Files are written to a temporary name and renamed, so a crash or a concurrent
    reader never sees half a file.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _stem(self, featurizer: Featurizer, smiles: Sequence[str]) -> str:
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", featurizer.name)
        return f"{safe_name}-{_smiles_digest(smiles)}"

    def path(self, featurizer: Featurizer, smiles: Sequence[str]) -> Path | None:
        """The file holding the features of ``smiles``, or ``None`` if not computed yet."""
        stem = self._stem(featurizer, smiles)
        dense = self.directory / f"{stem}.npy"
        if dense.exists():
            return dense
        packed = sorted(self.directory.glob(f"{stem}.bits*.npy"))
        return packed[0] if packed else None

    def get(
        self,
        featurizer: Featurizer,
        smiles: Sequence[str],
        *,
        progress: Callable[[int, int], None] | None = None,
        chunk_size: int = CHUNK_ROWS,
    ) -> np.ndarray:
        """Features of ``smiles``, read from the cache or computed and stored.

        Computing runs ``chunk_size`` molecules at a time and calls ``progress(done, total)``
        after each chunk (once with ``(total, total)`` on a cache hit).
        """
        total = len(smiles)
        found = self.path(featurizer, smiles)
        if found is not None:
            features = self._load(found)
            if len(features) == total:
                if progress is not None:
                    progress(total, total)
                return features
        features = self._compute(featurizer, smiles, progress, chunk_size)
        self._store(self._stem(featurizer, smiles), features)
        return features

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        stored = np.load(path)
        match = re.search(r"\.bits(\d+)\.npy$", path.name)
        if match is None:
            return stored
        return np.unpackbits(stored, axis=1, count=int(match.group(1)))

    @staticmethod
    def _compute(
        featurizer: Featurizer,
        smiles: Sequence[str],
        progress: Callable[[int, int], None] | None,
        chunk_size: int,
    ) -> np.ndarray:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be 1 or more, got {chunk_size}")
        total = len(smiles)
        if total == 0:
            return np.asarray(featurizer([]))
        features: np.ndarray | None = None
        for start in range(0, total, chunk_size):
            stop = min(start + chunk_size, total)
            block = np.asarray(featurizer(list(smiles[start:stop])))
            if block.ndim != 2 or len(block) != stop - start:
                raise ValueError(
                    f"featurizer {featurizer.name!r} returned shape {block.shape} "
                    f"for {stop - start} SMILES; expected one row per SMILES"
                )
            if features is None:
                features = np.empty((total, block.shape[1]), dtype=block.dtype)
            features[start:stop] = block
            if progress is not None:
                progress(stop, total)
        assert features is not None
        if features.dtype == np.bool_:
            features = features.view(np.uint8)
        return features

    def _store(self, stem: str, features: np.ndarray) -> None:
        binary = (
            features.dtype == np.uint8
            and features.ndim == 2
            and len(features) > 0
            and int(features.max()) <= 1
        )
        if binary:
            name = f"{stem}.bits{features.shape[1]}.npy"
            stored = np.packbits(features, axis=1)
        else:
            name, stored = f"{stem}.npy", features
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, stored)
            os.replace(tmp, self.directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r})"

    def rows(self, featurizer: Featurizer, smiles: Sequence[str]) -> FeatureRows:
        """The features of ``smiles`` as a :class:`FeatureRows`: filled from this cache (the
        whole space, or the rows other processes stored), computed row by row as needed."""
        return FeatureRows(self, featurizer, smiles)


class FeatureRows:
    """The features of a search space, computed row by row as they are asked for.

    Several ML workers each predicting a part of the space then featurize only their part,
    at the same time, instead of each featurizing all of it. The rows a process computes
    are stored in the cache directory as a part file (``<stem>.rows-<digest>.npy``, its
    indices in ``.index`` beside it), which other processes and later runs read; once one
    process holds every row it stores the whole matrix as :class:`FeatureCache` does.
    ``spent`` counts the seconds spent reading and computing features; ``source`` says
    where the first rows came from (``"disk"`` or ``"computed"``).
    """

    def __init__(self, cache: FeatureCache, featurizer: Featurizer, smiles: Sequence[str]):
        started = time.perf_counter()
        self.cache = cache
        self.featurizer = featurizer
        self.smiles = smiles
        self.stem = cache._stem(featurizer, smiles)
        self.matrix: np.ndarray | None = None
        self.known = np.zeros(len(smiles), dtype=bool)
        found = cache.path(featurizer, smiles)
        if found is not None:
            whole = cache._load(found)
            if len(whole) == len(smiles):
                self.matrix = whole
                self.known[:] = True
        if not self.known.all():
            for part in sorted(cache.directory.glob(f"{self.stem}.rows-*.npy")):
                try:
                    index_file = part.parent / (part.name[: -len(".npy")] + ".index")
                    indices = np.load(index_file, allow_pickle=False)
                    block = np.load(part, allow_pickle=False)
                except (OSError, ValueError):
                    continue  # damaged, or not all there: its rows are computed instead
                if len(block) != len(indices) or len(indices) == 0:
                    continue
                self._place(indices, block)
        self.source = "disk" if self.known.any() else "computed"
        self.spent = time.perf_counter() - started

    def _place(self, indices: np.ndarray, block: np.ndarray) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((len(self.smiles), block.shape[1]), dtype=block.dtype)
        self.matrix[indices] = block
        self.known[indices] = True

    def get(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The features of the rows ``indices``, computing (and storing) those not known."""
        wanted = np.asarray(indices, dtype=int)
        missing = np.unique(wanted[~self.known[wanted]])
        if len(missing):
            started = time.perf_counter()
            block = self.cache._compute(
                self.featurizer, [self.smiles[i] for i in missing], None, CHUNK_ROWS
            )
            self._place(missing, block)
            self._store_part(missing, block)
            if self.known.all():
                self.cache._store(self.stem, self.matrix)
            self.spent += time.perf_counter() - started
        if self.matrix is None:  # nothing computed: no rows were asked for
            return np.zeros((0, 0), dtype=np.uint8)
        return self.matrix[wanted]

    def _store_part(self, indices: np.ndarray, block: np.ndarray) -> None:
        digest = hashlib.sha256(indices.tobytes()).hexdigest()[:16]
        base = f"{self.stem}.rows-{digest}"
        self.cache.directory.mkdir(parents=True, exist_ok=True)
        # The indices first, then the rows: whoever finds the rows finds their indices.
        for data, suffix in ((indices, ".index"), (block, ".npy")):
            fd, tmp = tempfile.mkstemp(dir=self.cache.directory, prefix=".part.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.save(handle, data)
                os.replace(tmp, self.cache.directory / (base + suffix))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
