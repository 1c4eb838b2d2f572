"""Experiment statistics: power and sample size, analysis of finished tests.

Plain functions and frozen dataclasses, no Dagster: the A/B power tables, segment test plans,
simulated experiment assets and the dashboard call these. See `power` and `analysis` for the
conventions (control = A, treatment = B, relative lifts, which power method the tables use).
"""

from cip_pipeline.stats.analysis import (
    BetaBinomialResult,
    CupedResult,
    SampleRatioMismatch,
    TwoProportionZTest,
    WelchTTest,
    beta_binomial_ab,
    cuped_adjust,
    cuped_effect,
    cuped_theta,
    prob_beta_greater_exact,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest,
    welch_ttest_from_stats,
)
from cip_pipeline.stats.power import (
    MinimumDetectableEffect,
    SampleSize,
    cohens_d,
    cohens_h,
    experiment_duration_days,
    mde_continuous,
    mde_two_proportions,
    power_continuous,
    power_two_proportions,
    sample_size_continuous,
    sample_size_two_proportions,
)

__all__ = [
    "BetaBinomialResult",
    "CupedResult",
    "MinimumDetectableEffect",
    "SampleRatioMismatch",
    "SampleSize",
    "TwoProportionZTest",
    "WelchTTest",
    "beta_binomial_ab",
    "cohens_d",
    "cohens_h",
    "cuped_adjust",
    "cuped_effect",
    "cuped_theta",
    "experiment_duration_days",
    "mde_continuous",
    "mde_two_proportions",
    "power_continuous",
    "power_two_proportions",
    "prob_beta_greater_exact",
    "sample_ratio_mismatch",
    "sample_size_continuous",
    "sample_size_two_proportions",
    "two_proportion_ztest",
    "welch_ttest",
    "welch_ttest_from_stats",
]
