"""Triton Python-backend entry point of `efficientnet_lite0_onnx_answers`; the implementation (and its contract) is
wastesort.triton.answers_model in the wastesort package, shared by every model that needs it."""

from wastesort.triton.answers_model import TritonPythonModel  # noqa: F401
