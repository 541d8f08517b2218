"""Shared logic of the waste-sorting Triton deployment.

Everything that more than one role needs (labels, the preprocessing contract, dataset
scanning and splitting, paths) lives here once. This package imports no torch: the serving
side and the client use it too. Training code that needs torch lives in
``wastesort.training``.
"""

from wastesort.contract import PreprocessContract
from wastesort.labels import LABELS

__all__ = ["LABELS", "PreprocessContract"]
__version__ = "0.1.0"
