"""The fast weighted ranking metrics equal scikit-learn's, ties included."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cip_pipeline.ml import propensity as prop


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_metrics_equal_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(5_000) < 0.1).astype(float)
    score = y * 0.8 + rng.random(5_000)
    if ties:
        score = np.round(score, 1)
    groups, n = prop._ranked_groups(score)
    auc, ap, _ = prop.weighted_ranking_metrics(groups, n, y, np.ones_like(y))
    assert auc == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, score), abs=1e-12)
    w = rng.poisson(1.0, y.size).astype(float)
    auc_w, ap_w, _ = prop.weighted_ranking_metrics(groups, n, y, w)
    assert auc_w == pytest.approx(roc_auc_score(y, score, sample_weight=w), abs=1e-12)
    assert ap_w == pytest.approx(average_precision_score(y, score, sample_weight=w), abs=1e-12)


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    y = (rng.random(20_000) < 0.05).astype(float)
    score = y + rng.normal(0, 1.2, y.size)
    m = prop.evaluate(y, score, False, prop.bootstrap_weights(y.size, 200))
    lo, hi = m.intervals["roc_auc"]
    assert lo < m.roc_auc < hi and hi - lo < 0.05
    assert m.at_k["10%"]["lift"] > 1


def test_bootstrap_intervals_are_percentiles_of_sklearn_on_the_shared_resamples() -> None:
    """Each score's intervals are the 2.5 and 97.5 percentiles of scikit-learn's metrics over
    the same Poisson-reweighted replicates: the weights are drawn once and shared."""
    rng = np.random.default_rng(8)
    y = (rng.random(3_000) < 0.08).astype(float)
    scores = {"model": y * 0.6 + rng.random(y.size), "rule": np.round(rng.random(y.size), 1)}
    weights = prop.bootstrap_weights(y.size, replicates=40, seed=4)
    assert weights.shape == (40, y.size) and weights.mean() == pytest.approx(1.0, abs=0.01)
    # Poisson(1): P(0) = P(1) = 1/e
    assert (weights == 0).mean() == pytest.approx(np.exp(-1), abs=0.01)
    for score in scores.values():
        m = prop.evaluate(y, score, False, weights)
        for name, metric in (("roc_auc", roc_auc_score), ("pr_auc", average_precision_score)):
            draws = [metric(y, score, sample_weight=w) for w in weights.astype(float)]
            assert m.intervals[name] == pytest.approx(np.percentile(draws, [2.5, 97.5]), abs=1e-12)
    assert "roc_auc" not in prop.evaluate(y, scores["model"], False).intervals


def test_top_share_is_the_mean_over_every_order_of_the_ties() -> None:
    """Precision, recall and lift in the top share count the scores' ties as a random order
    within them would on average: checked against every order of a small example."""
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0], dtype=float)
    score = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0.2])
    top = 3  # share 3/8: the first row, then two of the four tied at 0.5 (one of them a hit)
    orders = list(itertools.permutations(range(len(y))))
    hits = np.mean([y[sorted(order, key=lambda i: -score[i])[:top]].sum() for order in orders])
    assert hits == pytest.approx(1.5)  # by hand: 1 + 2 * 1/4
    m = prop._top_k(y, score, top / len(y))
    assert m["precision"] == pytest.approx(hits / top)
    assert m["recall"] == pytest.approx(hits / y.sum())
    assert m["lift"] == pytest.approx((hits / top) / y.mean())


def test_bootstrap_lift_is_the_point_lift_of_the_resampled_rows() -> None:
    """A replicate's lift at 10% is `_top_k`'s lift of its rows repeated by their weights. A
    rule that ties most users (few carted in the last week, say) used to get an interval of
    [1, 1] around a point lift above 1: the tied group was counted whole in the bootstrap and
    by row order in the estimate."""
    rng = np.random.default_rng(6)
    y = (rng.random(4_000) < 0.1).astype(float)
    rule = (rng.random(y.size) < 0.04 + 0.3 * y).astype(float)  # 1 for a few, most of them hits
    groups, n = prop._ranked_groups(rule)
    weights = prop.bootstrap_weights(y.size, replicates=5, seed=2)
    for w in weights:
        repeated = np.repeat(np.arange(y.size), w)
        _, _, lift = prop.weighted_ranking_metrics(groups, n, y, w.astype(float))
        assert lift == pytest.approx(prop._top_k(y[repeated], rule[repeated], 0.10)["lift"])
    m = prop.evaluate(y, rule, False, prop.bootstrap_weights(y.size, 200))
    lo, hi = m.intervals["lift_10%"]
    assert m.at_k["10%"]["lift"] > 1.5 and lo < m.at_k["10%"]["lift"] < hi


def test_logistic_baseline_reaches_the_optimum_of_its_objective() -> None:
    """The class-weighted, L2-penalized (C = 1) logistic regression on standardised features:
    at the fitted coefficients the objective's gradient, computed here by hand, is below 1e-4
    of its value at zero (L-BFGS, the solver before, stopped at 2.3e-4 on these rows)."""
    rng = np.random.default_rng(2)
    n, k = 20_000, len(prop.NUMERIC_FEATURES)
    x = rng.normal(size=(n, len(prop.FEATURES)))
    x[:, 0] *= 50  # unscaled: the pipeline standardises
    z = x[:, :k] @ rng.normal(size=k) * 0.3 - 2.5
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    model = prop.fit_logistic(x, y)
    scaler, logistic = model[0], model[-1]  # type: ignore[index]
    xs = scaler.transform(x[:, :k])
    weight = np.where(y == 1, n / (2 * y.sum()), n / (2 * (n - y.sum())))  # "balanced"

    def gradient(coef: np.ndarray, intercept: float) -> np.ndarray:
        residual = weight * (1 / (1 + np.exp(-(xs @ coef + intercept))) - y)
        return np.concatenate([xs.T @ residual + coef, [residual.sum()]])  # intercept: no L2

    at_fit = gradient(logistic.coef_[0], logistic.intercept_[0])
    at_zero = gradient(np.zeros(k), 0.0)
    assert np.abs(at_fit).max() < 1e-4 * np.abs(at_zero).max()
    p = 1 / (1 + np.exp(-(xs @ logistic.coef_[0] + logistic.intercept_[0])))
    assert np.allclose(prop.logistic_scores(model, x), p)
