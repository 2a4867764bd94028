"""Batch selection (BMDAL methods) and offline optimal design on structure features.

``select_batch`` picks B candidates with random / max_unc / max_dist / max_det / lcmd / kmeans_pp
(Holzmüller et al., JMLR 2023); ``d_optimal`` / ``a_optimal`` / ``design_report`` do offline
optimal design (Barzdajn & Race 2024). All work in feature space: memory O(N·K + N·B).
"""

from ubmd.select.batch import KERNELS, METHODS, SelectionResult, select_batch
from ubmd.select.design import DesignResult, Swap, a_optimal, d_optimal
from ubmd.select.report import DesignReport, design_report, plot_design_report

__all__ = [
    "KERNELS",
    "METHODS",
    "DesignReport",
    "DesignResult",
    "SelectionResult",
    "Swap",
    "a_optimal",
    "d_optimal",
    "design_report",
    "plot_design_report",
    "select_batch",
]
