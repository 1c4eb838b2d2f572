"""The propensity module's small parts: the fast weighted ranking metrics equal
scikit-learn's, ties included; the encoding and the logistic baseline on hand-made rows."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

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
    scaler, logistic = model[-2], model[-1]  # type: ignore[index]
    xs = scaler.transform(x[:, :k])
    weight = np.where(y == 1, n / (2 * y.sum()), n / (2 * (n - y.sum())))  # "balanced"

    def gradient(coef: np.ndarray, intercept: float) -> np.ndarray:
        residual = weight * (1 / (1 + np.exp(-(xs @ coef + intercept))) - y)
        return np.concatenate([xs.T @ residual + coef, [residual.sum()]])  # intercept: no L2

    at_fit = gradient(logistic.coef_[0], logistic.intercept_[0])
    at_zero = gradient(np.zeros(k), 0.0)
    assert np.abs(at_fit).max() < 1e-4 * np.abs(at_zero).max()
    p = 1 / (1 + np.exp(-(xs @ logistic.coef_[0] + logistic.intercept_[0])))
    # the scores are probabilities: the weighted odds divided by the positives' weight
    odds = p / (1 - p) / ((n - y.sum()) / y.sum())
    assert np.allclose(prop.logistic_scores(model, x), odds / (1 + odds))


def _frame(**columns: list[object]) -> pl.DataFrame:
    """Feature rows: the given columns, every other numeric feature 0, no category or brand."""
    n = len(next(iter(columns.values())))
    rows = {name: [0.0] * n for name in prop.NUMERIC_FEATURES}
    rows.update(primary_category=[None] * n, preferred_brand=[None] * n)
    strings = {"primary_category": pl.String, "preferred_brand": pl.String}
    return pl.DataFrame({**rows, **columns}, schema_overrides=strings)


def test_encode_gives_no_brand_a_code_of_its_own() -> None:
    """A kept brand is coded by its rank, a brand outside them by the shared code after them,
    no brand by the code after that: with two kept brands, 0 or 1, then 2, then 3. No brand
    used to get the shared code 2 (replace_strict sends null to its default)."""
    frame = _frame(
        preferred_brand=["acme", "zeta", None, "bolt"],
        primary_category=["sport", "apparel", None, "auto"],
    )
    x, codes = prop.encode(frame, {"acme": 0, "bolt": 1})
    assert codes == {"acme": 0, "bolt": 1}
    assert x[:, -1].tolist() == [0.0, 2.0, 3.0, 1.0]
    # categories by their place in the sorted names; none is missing (LightGBM's own bucket)
    assert x[[0, 1, 3], -2].tolist() == [11.0, 1.0, 3.0] and np.isnan(x[2, -2])
    # codes learnt from the rows: the most frequent brand first, then by name
    frame = _frame(preferred_brand=["zeta", None, "acme", "zeta", None])
    x, codes = prop.encode(frame)
    assert codes == {"zeta": 0, "acme": 1}
    assert x[:, -1].tolist() == [0.0, 3.0, 1.0, 0.0, 3.0]
    # a model registered before "no brand" had its code of its own is scored as trained
    old_model = prop.no_brand_code(codes, {"preferred_brand": codes})
    assert old_model == 2 and prop.no_brand_code(codes, {"no_brand": 3}) == 3
    x, _ = prop.encode(frame, codes, old_model)
    assert x[:, -1].tolist() == [0.0, 2.0, 1.0, 0.0, 2.0]


def test_logistic_baseline_fills_missing_features_with_what_they_mean() -> None:
    """Never carted before the cutoff is one day longer ago than the longest seen in the
    training rows (10.5 + 1), whatever the rows scored hold; no finished session averages 0
    seconds. The scores are those of the same regression on the rows filled by hand. Both
    used to be -1: never carted looked like the most recent cart."""
    train = _frame(
        days_since_cart=[2.5, None, 10.5, None, 0.25, 7.0],
        avg_session_seconds=[None, 30.0, 600.0, None, 45.0, 0.0],
        events_w=[3.0, 1.0, 9.0, 0.0, 12.0, 2.0],
    )
    y = np.array([1, 0, 1, 0, 1, 0])
    scored = _frame(days_since_cart=[None, 20.0], avg_session_seconds=[None, 12.0])
    cart = prop.NUMERIC_FEATURES.index("days_since_cart")
    seconds = prop.NUMERIC_FEATURES.index("avg_session_seconds")
    (x, _), (x_scored, _) = prop.encode(train), prop.encode(scored)
    model = prop.fit_logistic(x, y)

    k = len(prop.NUMERIC_FEATURES)
    by_hand = x[:, :k].copy()
    by_hand[:, cart] = [2.5, 11.5, 10.5, 11.5, 0.25, 7.0]
    by_hand[:, seconds] = [0.0, 30.0, 600.0, 0.0, 45.0, 0.0]
    scored_by_hand = x_scored[:, :k].copy()
    scored_by_hand[:, cart], scored_by_hand[:, seconds] = [11.5, 20.0], [0.0, 12.0]
    assert not np.isnan(by_hand).any() and not np.isnan(scored_by_hand).any()
    reference = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=500, class_weight="balanced", solver="newton-cholesky"),
    ).fit(by_hand, y)
    weighted = reference.predict_proba(scored_by_hand)[:, 1]
    odds = weighted / (1 - weighted) / 1.0  # three positives, three negatives: weight 1
    assert np.allclose(prop.logistic_scores(model, x_scored), odds / (1 + odds))
    filled = model[0].transform(x[:, :k])  # type: ignore[index]
    assert filled[:, cart].tolist() == [2.5, 11.5, 10.5, 11.5, 0.25, 7.0]
    assert filled[:, seconds].tolist() == [0.0, 30.0, 600.0, 0.0, 45.0, 0.0]
    filled_scored = model[0].transform(x_scored[:, :k])  # type: ignore[index]
    assert filled_scored[:, cart].tolist() == [11.5, 20.0]
    assert filled_scored[:, seconds].tolist() == [0.0, 12.0]
    # a missing value with no meaning is refused, not filled
    x_scored[0, prop.NUMERIC_FEATURES.index("events_w")] = np.nan
    with pytest.raises(ValueError, match="events_w"):
        prop.logistic_scores(model, x_scored)


def test_weighted_scores_become_probabilities_again() -> None:
    """A positive weighing 2 negatives doubles the odds: 0.5 (odds 1) is 1/3 (odds 1/2), 0.8
    (odds 4) is 2/3; 0 and 1 stay; the order is kept."""
    got = prop.unweighted(np.array([0.0, 0.5, 0.8, 1.0]), 2.0)
    assert np.allclose(got, [0.0, 1 / 3, 2 / 3, 1.0])
    assert np.array_equal(prop.unweighted(np.array([0.3, 0.7]), 1.0), [0.3, 0.7])


def test_class_weighted_models_give_calibrated_probabilities() -> None:
    """Rows drawn from a known logistic model with a 5% base rate: both the class-weighted
    LightGBM (scale_pos_weight 2) and the balanced logistic regression, once their weighting is
    divided back, predict on average the base rate of fresh rows (within 10%), and their Brier
    scores beat the constant base rate's p(1 - p). Weighted as fitted, the regression's mean
    is near 0.5 and its Brier several times the constant's."""
    rng = np.random.default_rng(5)
    k = len(prop.NUMERIC_FEATURES)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.full((n, len(prop.FEATURES)), np.nan)
        x[:, :k] = rng.normal(size=(n, k))
        p = 1 / (1 + np.exp(-(x[:, 0] + 0.5 * x[:, 1] - 3.6)))
        return x, (rng.random(n) < p).astype(np.int8)

    (x, y), (x_new, y_new) = draw(40_000), draw(40_000)
    rate = float(y_new.mean())
    constant = rate * (1 - rate)
    booster = prop.train_booster(x, y, threads=1)
    logistic = prop.fit_logistic(x, y)
    for scores in (
        prop.booster_probabilities(booster, x_new, prop.LGB_PARAMS),
        prop.logistic_scores(logistic, x_new),
    ):
        assert abs(scores.mean() - rate) < 0.1 * rate
        assert np.mean((scores - y_new) ** 2) < constant
    assert logistic.predict_proba(x_new[:, :k])[:, 1].mean() > 0.3
