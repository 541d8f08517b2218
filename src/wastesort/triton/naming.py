"""The model repository's naming rules, owned here (no Triton imports: the client uses them).

* ``preprocess``: the decoder shared by every ensemble.
* ``<net>_onnx``: the classifier of network ``net`` (the committed FP32 export).
* ``<net>_<variant>``: a precision or TTA variant (``onnx_int8``, ``onnx_tta``, ``trt_fp16``...).
* ``ensemble_<net>`` serves the base classifier and ``ensemble_<net>_<variant>`` a variant:
  bytes in, probabilities out.
* ``<classifier>_answers``: the Python step that counts a classifier's answers in the metrics
  when the classifier runs on a GPU backend (the ensemble's ``configs/gpu.pbtxt``).
* The service's default: the ensemble the rule of :mod:`wastesort.triton.default` picked,
  marked in its config, among :func:`default_ensembles` (the ones ``make build`` installs first,
  then the ones ``make release`` commits); the first ready one where none is marked.
"""

from __future__ import annotations

from pathlib import Path

PREPROCESS = "preprocess"
#: Variants of the ONNX Runtime classifier that the default ensembles serve.
INT8 = "onnx_int8"
TTA = "onnx_tta"
INT8_TTA = "onnx_int8_tta"
#: The variants that may be the service's default besides the base classifier: ``make build``'s
#: (gated INT8, plain and TTA) before ``make release``'s (TTA), so that a mark ``make build``
#: set wins over the committed one.
PREFERRED_VARIANTS = (INT8, INT8_TTA, TTA)


def classifier_name(net: str) -> str:
    return f"{net}_onnx"


def variant_name(net: str, variant: str) -> str:
    return f"{net}_{variant}"


#: Config parameter of an answers step: the classifier it counts for (the metrics' ``model`` label).
COUNTED_AS_PARAMETER = "counted_as"


def answers_name(classifier: str) -> str:
    """The step that counts ``classifier``'s answers behind a GPU backend."""
    return f"{classifier}_answers"


def ensemble_of(classifier: str) -> str:
    """The ensemble serving ``classifier``: ``ensemble_<net>`` for ``<net>_onnx``,
    ``ensemble_<classifier>`` for a variant."""
    return f"ensemble_{classifier.removesuffix('_onnx')}"


def ensemble_name(net: str) -> str:
    """The ensemble serving ``net``'s base classifier."""
    return ensemble_of(classifier_name(net))


def installed_file(repository: Path, model: str, file: str = "model.onnx") -> Path:
    """Where model ``model``'s version-1 file lies in ``repository``."""
    return repository / model / "1" / file


def default_ensembles(net: str) -> tuple[str, ...]:
    """The ensembles that may serve ``net`` when a client names none, in the order
    :func:`wastesort.triton.default.choose` reads them (:data:`PREFERRED_VARIANTS`' ensembles,
    then the base one)."""
    return *(ensemble_of(variant_name(net, v)) for v in PREFERRED_VARIANTS), ensemble_name(net)
