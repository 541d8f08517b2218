"""Triton Python-backend entry point of `efficientnet_lite0_onnx_tta`; the implementation (and its contract) is
wastesort.triton.onnx_model in the wastesort package, shared by every model that needs it."""

from wastesort.triton.onnx_model import TritonPythonModel  # noqa: F401
