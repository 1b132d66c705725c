"""The colour of a model's runs in MLflow's charts: one per variant, the same in every sweep.

MLflow colours runs by a hash of their id, so a sweep's six models often share a colour in its charts;
its UI's colour picker saves a choice in the run tag :data:`RUN_COLOR_TAG`, which the package sets
when it opens a model's run.
"""

from __future__ import annotations

from ctsl_hpc.variants import names

RUN_COLOR_TAG = "mlflow.runColor"  # MLflow's own tag: the UI's colour picker writes it, the charts read it
# matplotlib's "tab10" palette: ten colours told apart in print and by most colour-blind readers
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf")


def variant_colour(variant: str) -> str:
    """The chart colour of ``variant``'s runs: its place in the variant table picks one of ten (cycling).

    Example:
        >>> variant_colour("original"), variant_colour("RM+TL+CL")
        ('#1f77b4', '#8c564b')
    """
    return _PALETTE[names().index(variant) % len(_PALETTE)]
