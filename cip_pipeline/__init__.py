"""Customer Intelligence Platform: the `cip_pipeline` Dagster code location."""

__version__ = "0.1.0"
