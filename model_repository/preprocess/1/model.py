"""Triton Python-backend entry point of `preprocess`; the implementation (and its contract) is
wastesort.triton.preprocess_model in the wastesort package, shared by every model that needs it."""

from wastesort.triton.preprocess_model import TritonPythonModel  # noqa: F401
