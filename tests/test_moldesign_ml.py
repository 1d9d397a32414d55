"""Scorers and selectors of the molecular-design app, run for real on a small slice of QM9."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm, spearmanr

pytest.importorskip("rdkit")

from rdkit import Chem
from rdkit.Chem import Descriptors

from steersman.apps.moldesign.scorers import (
    GP_DESCRIPTORS,
    Bootstrap,
    FeatureCache,
    FingerprintsWithDescriptors,
    FittedTanimotoDescriptorGP,
    FittedTanimotoGP,
    GPRScorer,
    KNNScorer,
    MorganFingerprints,
    RandomForestScorer,
    RDKitDescriptors,
    Scorer,
    TanimotoGP,
    infer,
    infer_features,
    tanimoto_similarity,
    train,
)
from steersman.apps.moldesign.selectors import (
    DiversityGreedySelector,
    EHVISelector,
    EISelector,
    GreedySelector,
    ParetoSelector,
    RandomSelector,
    Selector,
    ThompsonSelector,
    UCBSelector,
    _front,
    _hypervolume_improvement,
    pareto_ranks,
)

QM9 = Path(__file__).resolve().parents[1] / "examples" / "moldesign" / "qm9-1000.smi"
if not QM9.exists():
    QM9 = Path("/work/shared/data/qm9-1000.smi")

N_MOLECULES = 120


@pytest.fixture(scope="module")
def smiles() -> list[str]:
    lines = QM9.read_text().split("\n")
    return [line.split()[0] for line in lines if line.strip()][:N_MOLECULES]


@pytest.fixture(scope="module")
def polar_area(smiles: list[str]) -> np.ndarray:
    """Topological polar surface area: cheap, exact, and learnable from substructures."""
    return np.array([Descriptors.TPSA(Chem.MolFromSmiles(s)) for s in smiles])


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    """Every fourth molecule is held out."""
    held_out = np.arange(N_MOLECULES) % 4 == 0
    return np.flatnonzero(~held_out), np.flatnonzero(held_out)


SCORERS = {
    "knn": lambda: KNNScorer(),
    "gpr": lambda: GPRScorer(),
    "forest": lambda: RandomForestScorer(n_estimators=50),
    "tanimoto-gp": lambda: TanimotoGP(),
    "fitted-tanimoto-gp": lambda: FittedTanimotoGP(),
    "fitted-tanimoto-descriptor-gp": lambda: FittedTanimotoDescriptorGP(),
    "bootstrap-knn": lambda: Bootstrap(KNNScorer(n_neighbors=3), n_models=4),
    "bootstrap-gp": lambda: Bootstrap(TanimotoGP(), n_models=4),
}


# ============================================================================ featurizers
def test_morgan_fingerprints_are_bits_and_a_bad_smiles_gets_zeros():
    featurize = MorganFingerprints(radius=2, n_bits=512)
    X = featurize(["CCO", "not a molecule", "c1ccccc1", ""])
    assert X.shape == (4, 512)
    assert X.dtype == np.uint8
    assert set(np.unique(X)) <= {0, 1}
    assert X[0].sum() > 0 and X[2].sum() > 0
    assert X[1].sum() == 0 and X[3].sum() == 0
    assert featurize.name != MorganFingerprints(radius=3, n_bits=512).name


def test_descriptors_are_finite_and_a_bad_smiles_gets_zeros():
    featurize = RDKitDescriptors()
    X = featurize(["CCO", "C1CC", "CC(=O)O"])
    assert X.shape[0] == 3 and 20 <= X.shape[1] <= 40
    assert np.isfinite(X).all()
    assert not X[1].any()
    assert X[2, featurize.names.index("MolWt")] == pytest.approx(60.05, abs=0.01)
    chosen = RDKitDescriptors(["MolWt", "TPSA"])
    assert chosen(["CCO"]).shape == (1, 2) and chosen.name != featurize.name
    with pytest.raises(ValueError, match="unknown RDKit descriptors"):
        RDKitDescriptors(["MolWt", "NoSuchDescriptor"])


def test_featurizers_pickle_after_use():
    for featurize in (MorganFingerprints(), RDKitDescriptors()):
        before = featurize(["CCN"])
        clone = pickle.loads(pickle.dumps(featurize))
        assert np.array_equal(clone(["CCN"]), before)


def test_tanimoto_similarity_counts_shared_bits():
    a = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    b = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.uint8)
    similarity = tanimoto_similarity(a, b)
    # shared / in either: {0} of {0,1,2}; identical; nothing shared
    assert similarity[0].tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    assert similarity[1].tolist() == pytest.approx([0.0, 0.0, 1.0])  # two empty rows: identical


# =============================================================================== scorers
@pytest.mark.parametrize("make", SCORERS.values(), ids=SCORERS.keys())
def test_scorer_trains_predicts_and_pickles(make, smiles, polar_area, split):
    train_rows, test_rows = split
    scorer = make()
    fitted = train(scorer, [smiles[i] for i in train_rows], polar_area[train_rows].tolist())
    assert fitted is not scorer and fitted.is_fitted and not scorer.is_fitted

    mean, std = infer(fitted, [smiles[i] for i in test_rows])
    assert mean.shape == std.shape == (len(test_rows),)
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    assert (std >= 0).all()

    clone = pickle.loads(pickle.dumps(fitted))
    again_mean, again_std = infer(clone, [smiles[i] for i in test_rows])
    assert np.allclose(again_mean, mean) and np.allclose(again_std, std)


@pytest.mark.parametrize("name", ["knn", "gpr", "forest", "tanimoto-gp", "fitted-tanimoto-gp"])
def test_scorer_learns_polar_surface_area(name, smiles, polar_area, split):
    train_rows, test_rows = split
    fitted = train(SCORERS[name](), [smiles[i] for i in train_rows], polar_area[train_rows])
    mean, _ = infer(fitted, [smiles[i] for i in test_rows])
    rho = spearmanr(mean, polar_area[test_rows]).statistic
    assert rho > 0.3, f"{name}: Spearman {rho:.2f} between predictions and truth"


def test_bootstrap_spread_is_positive(smiles, polar_area, split):
    train_rows, test_rows = split
    X = MorganFingerprints()(smiles)
    fitted = Bootstrap(KNNScorer(), n_models=6, seed=1).fit(X[train_rows], polar_area[train_rows])
    assert len(fitted.members_) == 6
    _, std = fitted.predict(X[test_rows])
    assert (std > 0).all()


def test_tanimoto_gp_interpolates_training_points_and_doubts_strangers(smiles, polar_area):
    X = MorganFingerprints()(smiles)
    y = polar_area
    fitted = TanimotoGP(noise=1e-4).fit(X[:40], y[:40])
    mean, std_seen = fitted.predict(X[:40])
    assert np.allclose(mean, y[:40], atol=0.05 * y.std())
    _, std_stranger = fitted.predict(np.zeros((1, X.shape[1]), dtype=np.uint8))
    assert std_stranger[0] > 10 * std_seen.max()
    assert std_stranger[0] == pytest.approx(y[:40].std(), rel=1e-6)


def test_fit_leaves_the_original_alone_and_predict_checks_its_input(smiles, polar_area):
    X = MorganFingerprints()(smiles[:20])
    scorer = TanimotoGP()
    with pytest.raises(RuntimeError, match="predict with what fit"):
        scorer.predict(X)
    fitted = scorer.fit(X, polar_area[:20])
    assert not hasattr(scorer, "alpha_")
    with pytest.raises(ValueError, match="feature columns"):
        fitted.predict(X[:, :100])
    with pytest.raises(ValueError, match="one value per row"):
        scorer.fit(X, polar_area[:19])
    with pytest.raises(ValueError, match="NaN"):
        scorer.fit(X, np.where(np.arange(20) == 3, np.nan, polar_area[:20]))
    mean, std = fitted.predict(X[:0])
    assert mean.shape == std.shape == (0,)


def test_infer_features_and_chunks_agree_with_one_predict(smiles, polar_area):
    X = TanimotoGP().featurizer(smiles)  # Morgan counts
    fitted = TanimotoGP().fit(X[:30], polar_area[:30])
    whole = fitted.predict(X)
    chunked = TanimotoGP().fit(X[:30], polar_area[:30])
    chunked.chunk_size = 7
    for a, b in zip(whole, infer(chunked, smiles), strict=True):
        assert np.allclose(a, b)
    for a, b in zip(whole, infer_features(fitted, X), strict=True):
        assert np.array_equal(a, b)


class TrainingMean(Scorer):
    """A user-written scorer: predicts the mean of the training targets, with their spread."""

    def _fit(self, X, y):
        self.mean_, self.std_ = float(y.mean()), float(y.std())

    def _predict(self, X):
        return np.full(len(X), self.mean_), np.full(len(X), self.std_)


def test_a_user_scorer_plugs_in(smiles):
    fitted = train(TrainingMean(), smiles[:4], [1.0, 2.0, 3.0, 4.0])
    mean, std = infer(fitted, smiles[4:9])
    assert mean.tolist() == [2.5] * 5
    assert std == pytest.approx(np.full(5, np.std([1, 2, 3, 4])))
    assert repr(fitted) == "TrainingMean(featurizer=MorganFingerprints(radius=2, n_bits=2048))"


# ========================================================================= feature cache
def test_feature_cache_computes_once_and_returns_the_same_features(tmp_path, smiles):
    cache = FeatureCache(tmp_path / "features")
    featurize = MorganFingerprints()
    calls: list[tuple[int, int]] = []
    first = cache.get(
        featurize, smiles, progress=lambda done, total: calls.append((done, total)), chunk_size=50
    )
    assert calls == [(50, 120), (100, 120), (120, 120)]
    files = sorted((tmp_path / "features").iterdir())
    assert len(files) == 1 and files[0].name.startswith(featurize.name)
    assert files[0].stat().st_size < first.nbytes / 4  # bit-packed
    stamp = files[0].stat().st_mtime_ns

    calls.clear()
    second = cache.get(featurize, smiles, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(120, 120)]
    assert np.array_equal(first, second) and second.dtype == np.uint8
    assert np.array_equal(first, featurize(smiles))
    assert sorted((tmp_path / "features").iterdir()) == files
    assert files[0].stat().st_mtime_ns == stamp

    cache.get(featurize, smiles[:-1])  # another space: another file
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_feature_rows_are_shared_between_workers_and_runs(tmp_path, smiles):
    # Two workers each ask for half of the space: each computes only its half and stores it;
    # a fresh one (a resumed run) reads every row from what they stored, computing nothing.
    featurizer = MorganFingerprints(counts=True)
    space = smiles[:60]
    expected = featurizer(space)
    first = FeatureCache(tmp_path).rows(featurizer, space)
    second = FeatureCache(tmp_path).rows(featurizer, space)
    assert first.source == second.source == "computed"
    assert np.array_equal(first.get(range(30)), expected[:30])
    assert first.known.sum() == 30  # only what was asked for
    assert np.array_equal(second.get(range(30, 60)), expected[30:])
    assert second.known.sum() == 30
    third = FeatureCache(tmp_path).rows(featurizer, space)
    assert third.source == "disk" and third.known.all()
    spent = third.spent
    assert np.array_equal(third.get([59, 0, 7]), expected[[59, 0, 7]])
    assert third.spent == spent  # nothing computed
    # A worker that comes to hold every row stores the whole matrix as FeatureCache does.
    assert np.array_equal(first.get(range(60)), expected)
    assert FeatureCache(tmp_path).path(featurizer, space) is not None
    assert np.array_equal(FeatureCache(tmp_path).get(featurizer, space), expected)


def test_feature_cache_keeps_descriptors_dense(tmp_path, smiles):
    cache = FeatureCache(tmp_path)
    featurize = RDKitDescriptors(["MolWt", "TPSA", "MolLogP"])
    first = cache.get(featurize, smiles[:30], chunk_size=8)
    second = cache.get(featurize, smiles[:30])
    assert first.dtype == np.float64 and np.array_equal(first, second)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]


# ============================================================================= selectors
@pytest.fixture()
def candidates() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 50
    return {
        "mean": rng.normal(size=n),
        "std": rng.uniform(0.1, 1.0, size=n),
        "mean2": rng.normal(size=(n, 2)),
        "std2": rng.uniform(0.1, 1.0, size=(n, 2)),
        "features": (rng.random((n, 64)) < 0.3).astype(np.uint8),
        "observed2": rng.normal(size=(10, 2)),
    }


SINGLE = {
    "random": RandomSelector,
    "greedy": GreedySelector,
    "ucb": UCBSelector,
    "ei": EISelector,
    "thompson": ThompsonSelector,
    "diverse": lambda: DiversityGreedySelector(max_similarity=0.9),
}
DOUBLE = {"pareto": ParetoSelector, "ehvi": lambda: EHVISelector(n_samples=16)}


@pytest.mark.parametrize("make", SINGLE.values(), ids=SINGLE.keys())
def test_single_objective_selector_returns_distinct_valid_indices(make, candidates):
    selector = make()
    picks = selector.select(
        candidates["mean"],
        candidates["std"],
        10,
        best=0.5,
        features=candidates["features"],
        rng=np.random.default_rng(0),
    )
    assert len(picks) == 10 and len(set(picks.tolist())) == 10
    assert ((picks >= 0) & (picks < 50)).all()
    many = selector.select(
        candidates["mean"][:5], candidates["std"][:5], 9, features=candidates["features"][:5]
    )
    assert len(many) <= 5 and len(set(many.tolist())) == len(many)
    assert len(selector.select(candidates["mean"], candidates["std"], 0)) == 0


@pytest.mark.parametrize("make", DOUBLE.values(), ids=DOUBLE.keys())
def test_two_objective_selector_returns_distinct_valid_indices(make, candidates):
    selector = make()
    for observed in (candidates["observed2"], None):
        picks = selector.select(
            candidates["mean2"],
            candidates["std2"],
            12,
            observed=observed,
            rng=np.random.default_rng(0),
        )
        assert len(picks) == 12 and len(set(picks.tolist())) == 12
        assert ((picks >= 0) & (picks < 50)).all()
    everything = selector.select(candidates["mean2"][:6], candidates["std2"][:6], 20)
    assert sorted(everything.tolist()) == list(range(6))


def test_selectors_reject_bad_input_with_what_was_expected(candidates):
    mean, std = candidates["mean"], candidates["std"]
    with pytest.raises(ValueError, match="n must be 0 or more"):
        GreedySelector().select(mean, std, -1)
    with pytest.raises(ValueError, match="n must be an integer"):
        GreedySelector().select(mean, std, 2.5)
    with pytest.raises(ValueError, match="std must have the shape of mean"):
        UCBSelector().select(mean, std[:-1], 3)
    with pytest.raises(ValueError, match=r"expects mean of shape \(N,\)"):
        UCBSelector().select(candidates["mean2"], candidates["std2"], 3)
    with pytest.raises(ValueError, match=r"expects mean of shape \(N, 2\)"):
        ParetoSelector().select(mean, std, 3)
    with pytest.raises(ValueError, match="NaN"):
        EISelector().select(np.where(np.arange(50) == 4, np.nan, mean), std, 3)
    with pytest.raises(ValueError, match="0 or more everywhere"):
        UCBSelector().select(mean, -std, 3)
    with pytest.raises(ValueError, match="one row per candidate"):
        DiversityGreedySelector().select(mean, std, 3, features=candidates["features"][:10])
    with pytest.raises(ValueError, match="needs features"):
        DiversityGreedySelector().select(mean, std, 3)
    with pytest.raises(ValueError, match=r"observed must have shape \(M, 2\)"):
        EHVISelector().select(candidates["mean2"], candidates["std2"], 3, observed=mean)


def test_greedy_orders_by_mean(candidates):
    mean = candidates["mean"]
    picks = GreedySelector().select(mean, candidates["std"], 5)
    assert picks[0] == np.argmax(mean)
    assert picks.tolist() == np.argsort(-mean)[:5].tolist()


def test_ucb_prefers_the_uncertain_of_two_equal_means():
    picks = UCBSelector(beta=1.0).select(np.array([1.0, 1.0, 0.0]), np.array([0.1, 0.5, 0.2]), 1)
    assert picks.tolist() == [1]


def test_ei_prefers_a_chance_of_improving_over_a_sure_tie():
    mean = np.array([1.0, 0.9, 0.5])
    std = np.array([0.0, 0.5, 0.01])
    selector = EISelector()
    picks = selector.select(mean, std, 3, best=1.0)
    assert picks[0] == 1
    gap = 0.9 - 1.0
    expected = gap * norm.cdf(gap / 0.5) + 0.5 * norm.pdf(gap / 0.5)
    values = selector.acquisition(mean, std, best=1.0, rng=np.random.default_rng())
    assert values[1] == pytest.approx(expected)
    assert values[0] == 0.0


def test_ei_with_incumbent_rank_improves_on_the_kth_best_observed():
    mean = np.array([1.0, 0.6, 0.5])
    std = np.array([0.0, 0.2, 0.01])
    observed = np.array([2.0, 0.2, 1.0, 0.7])
    ranked = EISelector(incumbent_rank=3)
    picks = ranked.select(mean, std, 3, best=2.0, observed=observed)
    # Against the third best (0.7) the sure 1.0 gains 0.3 and comes first; against the best
    # (2.0) it gains nothing and the uncertain 0.6 comes first.
    plain = EISelector().acquisition(mean, std, best=0.7, rng=np.random.default_rng())
    assert picks.tolist() == np.argsort(-plain, kind="stable").tolist()
    assert picks[0] == 0
    assert EISelector().select(mean, std, 1, best=2.0, observed=observed)[0] == 1
    # With fewer values than the rank, the lowest observed is the incumbent.
    few = EISelector(incumbent_rank=10).select(mean, std, 3, observed=observed)
    lowest = EISelector().acquisition(mean, std, best=0.2, rng=np.random.default_rng())
    assert few.tolist() == np.argsort(-lowest, kind="stable").tolist()
    with pytest.raises(ValueError, match="needs observed"):
        ranked.select(mean, std, 1, best=2.0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="incumbent_rank"):
            EISelector(incumbent_rank=bad)
    assert EISelector(incumbent_rank=np.int64(3)).incumbent_rank == 3


def test_thompson_is_reproducible_per_seed_and_varies_across_seeds():
    mean = np.zeros(200)
    std = np.full(200, 5.0)
    selector = ThompsonSelector()
    first = selector.select(mean, std, 10, rng=np.random.default_rng(3))
    again = selector.select(mean, std, 10, rng=np.random.default_rng(3))
    other = selector.select(mean, std, 10, rng=np.random.default_rng(4))
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_diversity_greedy_skips_a_near_duplicate():
    features = np.zeros((4, 16), dtype=np.uint8)
    features[0, :8] = 1
    features[1, :8] = 1
    features[1, 8] = 1  # 8 of 9 bits shared with row 0: similarity 0.89
    features[2, 8:] = 1
    features[3, [0, 8, 15]] = 1
    mean = np.array([4.0, 3.0, 2.0, 1.0])
    std = np.zeros(4)
    picks = DiversityGreedySelector(GreedySelector(), max_similarity=0.7).select(
        mean, std, 3, features=features
    )
    assert picks.tolist() == [0, 2, 3]
    assert GreedySelector().select(mean, std, 3).tolist() == [0, 1, 2]


def test_pareto_ranks_match_brute_force():
    rng = np.random.default_rng(11)
    points = rng.integers(0, 6, size=(200, 2)).astype(float)  # many ties
    ranks = pareto_ranks(points)
    remaining = np.arange(len(points))
    front = 0
    while len(remaining):
        p = points[remaining]
        at_least = (p[None, :, :] >= p[:, None, :]).all(axis=2)
        better = (p[None, :, :] > p[:, None, :]).any(axis=2)
        dominated = (at_least & better).any(axis=1)
        assert (ranks[remaining[~dominated]] == front).all()
        remaining = remaining[dominated]
        front += 1


def test_pareto_picks_the_non_dominated_first():
    mean = np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 1.0], [1.0, 3.0], [2.0, 2.0], [2.5, 0.5]])
    std = np.full_like(mean, 0.1)
    for within in ("crowding", "optimistic"):
        picks = ParetoSelector(within).select(mean, std, 6)
        assert sorted(picks[:3].tolist()) == [1, 3, 4]
        assert picks[-1] == 0


def test_ehvi_prefers_an_improving_point_and_spreads_a_batch():
    observed = np.array([[1.0, 3.0], [3.0, 1.0]])
    mean = np.array(
        [
            [0.9, 0.9],  # dominated by the measured front
            [2.5, 2.5],  # the largest improvement
            [2.45, 2.45],  # nearly as large, but nothing left once the one above is added
            [0.5, 4.0],  # smaller, elsewhere on the front
        ]
    )
    selector = EHVISelector(n_samples=32, reference=[0.0, 0.0])
    exact = selector.select(mean, np.zeros_like(mean), 3, observed=observed)
    assert exact.tolist() == [1, 3, 2]

    std = np.full_like(mean, 0.05)
    noisy = selector.select(mean, std, 4, observed=observed, rng=np.random.default_rng(0))
    assert noisy[0] == 1 and noisy[1] == 3 and noisy[-1] == 0
    assert selector.select(mean[[0, 3]], std[[0, 3]], 1, observed=observed).tolist() == [1]


def _hypervolume(points, reference) -> float:
    """Area dominated by ``points`` above ``reference``, by a sweep over the first objective."""
    area, height = 0.0, reference[1]
    for x, y in sorted((tuple(p) for p in points), reverse=True):
        if x > reference[0] and y > height:
            area += (x - reference[0]) * (y - height)
            height = y
    return area


def test_hypervolume_improvement_matches_a_direct_computation():
    rng = np.random.default_rng(5)
    for _ in range(50):
        observed = rng.normal(size=(int(rng.integers(0, 10)), 2))
        reference = rng.normal(size=2) - 1.5
        samples = 1.5 * rng.normal(size=(10, 2))
        got = _hypervolume_improvement(samples, _front(observed), reference)
        before = _hypervolume(observed, reference)
        want = [_hypervolume([*observed, y], reference) - before for y in samples]
        assert got == pytest.approx(want, abs=1e-12)


class LowestFirst(Selector):
    """A user-written selector: smallest mean first."""

    def acquisition(self, mean, std, *, best, rng):
        return -mean


class Repeats(Selector):
    def choose(self, mean, std, n, *, best, features, observed, rng):
        return np.zeros(n, dtype=int)


def test_user_selectors_plug_in_and_are_checked(candidates):
    picks = LowestFirst().select(candidates["mean"], candidates["std"], 3)
    assert picks.tolist() == np.argsort(candidates["mean"])[:3].tolist()
    with pytest.raises(ValueError, match="more than once"):
        Repeats().select(candidates["mean"], candidates["std"], 3)


def test_count_fingerprints_tell_how_often_a_group_occurs():
    bits = MorganFingerprints()(["CCO", "CCCCCCO"])
    counts = MorganFingerprints(counts=True)(["CCO", "CCCCCCO"])
    assert bits.max() == 1 and counts.max() > 1
    assert np.array_equal(counts > 0, bits > 0)  # the same substructures, now counted
    assert MorganFingerprints(counts=True).name.endswith("-counts")


def test_inference_predicts_nothing_for_an_unreadable_smiles(tmp_path, smiles, polar_area):
    from steersman.apps.moldesign.thinkers import infer_space

    fitted = train(TanimotoGP(), smiles[:20], polar_area[:20])
    space = [*smiles[20:25], "not-a-smiles"]
    mean, std = infer_space(fitted, space, list(range(len(space))), str(tmp_path))
    assert np.isfinite(mean[:5]).all() and np.isfinite(std[:5]).all()
    assert np.isnan(mean[5]) and np.isnan(std[5])  # not the prior's large doubt


def test_fingerprints_at_several_radii_are_blocks_of_single_radius_ones(smiles):
    several = MorganFingerprints(radius=(1, 2, 3), counts=True)
    X = several(smiles[:30])
    assert several.blocks == 3 and X.shape == (30, 3 * 2048)
    for b, radius in enumerate((1, 2, 3)):
        alone = MorganFingerprints(radius=radius, counts=True)(smiles[:30])
        assert np.array_equal(X[:, b * 2048 : (b + 1) * 2048], alone)
    assert several.name == "morgan-r1+2+3-2048-counts"
    assert np.array_equal(pickle.loads(pickle.dumps(several))(smiles[:30]), X)


def test_fitted_gp_keeps_the_kernel_and_noise_of_highest_evidence(smiles, polar_area):
    from scipy.stats import multivariate_normal

    gp = FittedTanimotoGP()
    X, y = gp.featurizer(smiles[:80]), polar_area[:80]
    fitted = gp.fit(X, y)
    assert len(fitted.evidence_) == 4 * 6  # radius 1, 2, 3 and their mean; six noises
    best = max(fitted.evidence_, key=fitted.evidence_.get)
    assert (fitted.kernel_, fitted.noise_) == best
    # The evidence is the log density of the targets under the fitted prior, recomputed here
    # directly from the kernel matrix.
    width = 2048
    blocks = [X[:, b * width : (b + 1) * width].astype(float) for b in fitted.kernel_]
    K = np.mean([tanimoto_similarity(B, B) for B in blocks], axis=0)
    covariance = fitted.signal_variance_ * (K + fitted.noise_ * np.eye(len(y)))
    direct = multivariate_normal(mean=np.full(len(y), y.mean()), cov=covariance).logpdf(y)
    assert fitted.evidence_[best] == pytest.approx(direct, rel=1e-6)


def test_fitted_gp_chooses_more_noise_for_noisy_targets(smiles, polar_area):
    gp = FittedTanimotoGP()
    X, y = gp.featurizer(smiles), polar_area
    clean = gp.fit(X, y)
    rng = np.random.default_rng(0)
    noisy = gp.fit(X, y + rng.normal(0, 2 * y.std(), len(y)))
    assert noisy.noise_ > clean.noise_
    # Its doubt at a training molecule is then larger: it no longer trusts each value.
    assert noisy.predict(X[:5])[1].mean() > clean.predict(X[:5])[1].mean()


def test_fitted_gp_without_spread_still_doubts_what_it_has_not_seen(smiles):
    gp = FittedTanimotoGP()
    X = gp.featurizer(smiles[:6])
    fitted = gp.fit(X[:3], np.full(3, 7.0))  # all targets equal: nothing to scale by
    mean, std = fitted.predict(X[3:])
    assert np.allclose(mean, 7.0)
    assert (std > 0.1).all()


def test_fingerprint_radius_may_be_a_numpy_integer_and_old_pickles_load(smiles):
    assert MorganFingerprints(radius=np.int64(2)).radii == (2,)
    with pytest.raises(ValueError, match="radius must be"):
        MorganFingerprints(radius="two")
    # A featurizer pickled before several radii existed: one radius, one generator slot.
    old = MorganFingerprints.__new__(MorganFingerprints)
    old.__setstate__(
        {"radius": 2, "n_bits": 2048, "counts": True, "name": "morgan-r2-2048-counts",
         "_generator": None}
    )  # fmt: skip
    assert np.array_equal(old(smiles[:5]), MorganFingerprints(counts=True)(smiles[:5]))


def test_fingerprints_with_descriptors_keep_both_exactly(smiles):
    featurizer = FingerprintsWithDescriptors()
    X = featurizer([*smiles[:20], "not a smiles"])
    fingerprints, descriptors = featurizer.split(X)
    assert X.dtype == np.uint8 and featurizer.blocks == 3
    assert np.array_equal(fingerprints[:20], featurizer.fingerprints(smiles[:20]))
    expected = RDKitDescriptors(GP_DESCRIPTORS)(smiles[:20]).astype(np.float32)
    assert np.array_equal(descriptors[:20], expected)
    assert not X[20].any()  # an unreadable SMILES is all zeros, as with other featurizers
    assert featurizer.name == "morgan-r1+2+3-2048-counts+" + RDKitDescriptors(GP_DESCRIPTORS).name
    assert featurizer([]).shape == (0, X.shape[1])
    with pytest.raises(ValueError, match="uint8"):
        featurizer.split(X.astype(np.float32))


def test_fitted_descriptor_gp_chooses_among_kernels_by_evidence(smiles, polar_area):
    gp = FittedTanimotoDescriptorGP()
    X, y = gp.featurizer(smiles[:80]), polar_area[:80]
    fitted = gp.fit(X, y)
    # 4 Tanimoto kernels, each alone or with one of 3 descriptor length scales; 6 noises.
    assert len(fitted.evidence_) == 4 * 4 * 6
    best = max(fitted.evidence_, key=fitted.evidence_.get)
    assert (fitted.kernel_, fitted.lengthscale_, fitted.noise_) == best
    # Polar surface area is a descriptor: the descriptors win.
    assert fitted.lengthscale_ is not None
    # Without the descriptors (length scale None) the evidence is the parent's.
    parent = FittedTanimotoGP().fit(gp.featurizer.split(X)[0], y)
    for (kernel, noise), evidence in parent.evidence_.items():
        assert fitted.evidence_[kernel, None, noise] == pytest.approx(evidence)
    mean, std = fitted.predict(X[:5])
    assert np.allclose(mean, y[:5], atol=0.1 * y.std()) and (std >= 0).all()


def test_fitted_descriptor_gp_checks_its_arguments():
    with pytest.raises(ValueError, match="FingerprintsWithDescriptors"):
        FittedTanimotoDescriptorGP(featurizer=MorganFingerprints())
    with pytest.raises(ValueError, match="lengthscales"):
        FittedTanimotoDescriptorGP(lengthscales=())
    with pytest.raises(ValueError, match="lengthscales"):
        FittedTanimotoDescriptorGP(lengthscales=(1.0, 0.0))
    with pytest.raises(ValueError, match="descriptors must be"):
        FingerprintsWithDescriptors(descriptors=MorganFingerprints())
