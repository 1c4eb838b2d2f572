"""The fast weighted ranking metrics equal scikit-learn's, ties included."""

from __future__ import annotations

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
    m = prop.evaluate(y, score, probabilities=False, bootstrap=200)
    lo, hi = m.intervals["roc_auc"]
    assert lo < m.roc_auc < hi and hi - lo < 0.05
    assert m.at_k["10%"]["lift"] > 1
