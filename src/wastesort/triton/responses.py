"""Pieces shared by this project's Python-backend models: their config's parameters and error
responses (imports Triton's ``triton_python_backend_utils``, so only importable inside a backend stub)."""

from __future__ import annotations

import triton_python_backend_utils as pb_utils


def invalid_argument(message: str) -> pb_utils.InferenceResponse:
    """A response that fails its request with ``INVALID_ARG`` (HTTP 400, gRPC INVALID_ARGUMENT)
    and ``message``; the model and the other requests of its batch carry on."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def config_parameters(config: dict) -> dict[str, str]:
    """A model config's ``parameters`` (the JSON Triton hands to ``initialize``) as plain strings."""
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
