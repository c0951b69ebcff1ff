"""Multi-center audit: how far every site sits from every other (images), or how strongly the site drives each
feature of a radiomics table (before and after ComBat)."""

from shiftkit.shift.corrections import CORRECTIONS, adjust_p_values
from shiftkit.audit.matrix import MEASURES, ShiftMatrix, shift_matrix

__all__ = ["CORRECTIONS", "MEASURES", "ShiftMatrix", "adjust_p_values", "shift_matrix"]
