"""ONNX Runtime variants of an exported FP32 model. Every variant keeps the model's interface
(``IMAGES`` FP32 in, ``LOGITS``/``PROBABILITIES`` FP32 out) and its metadata (labels and
preprocessing contract), so the same ``preprocess`` model and ensemble serve all of them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

from wastesort.confidence import TYPICALITY_PREFIX
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, ShippedModel
from wastesort.variants import int8_graph
from wastesort.variants.calibration import ArrayCalibrationReader


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _restore_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Tools that rewrite a model may drop ``metadata_props``; put the source's back."""
    model = onnx.load(str(path))
    present = {p.key: p.value for p in model.metadata_props}
    if present != {**present, **metadata}:
        onnx.helper.set_model_props(model, {**present, **metadata})
        onnx.save(model, str(path))


def optimize_fp32(src: Path, dst: Path) -> Path:
    """Apply ONNX Runtime's graph optimisations offline and save the result.

    ``ORT_ENABLE_EXTENDED`` (constant folding, Conv+BN/activation fusions) is what may be saved
    portably; ``ORT_ENABLE_ALL`` adds layout transforms (NCHWc) tied to the CPU that ran them,
    which ONNX Runtime applies again at load time anyway.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    _restore_metadata(dst, _metadata(src))
    onnx.checker.check_model(str(dst))
    return dst


def layer_label(module: str) -> str:
    """A module name as the sweep tables show it, without the export's ``model.`` wrapper prefix."""
    return module.removeprefix("model.")


@dataclass(frozen=True)
class Int8Settings:
    """Static INT8 quantisation settings (``onnxruntime.quantization.quantize_static`` plus the
    rewrites of :mod:`wastesort.variants.int8_graph`).

    The defaults are ``quantize_static``'s own (QDQ, per-channel signed 8-bit weights, unsigned
    8-bit activations: U8S8, the pair ONNX Runtime's x86 kernels want, MinMax calibration) with
    the stem convolution kept in float. That suits networks of Conv + ReLU6 + Add such as
    EfficientNet-Lite, whose activations fold into the integer convolution; the stem, which sees
    the raw image, is where plain quantisation loses most. Per-network choices are in
    :data:`INT8_BY_NET`, each picked on the validation split by :func:`pick_int8` (the study:
    ``experiments/int8_settings/``).
    """

    per_channel: bool = True
    activation: str = "QUInt8"
    weight: str = "QInt8"
    method: str = "MinMax"
    percentile: float = 99.999
    calibration_batch: int = 20
    exclude_ops: tuple[str, ...] = ()
    only_ops: tuple[str, ...] = ()
    #: 7-bit weights: on x86 CPUs without VNNI (AVX2 only) ONNX Runtime's U8S8 kernels add
    #: pairs of products in 16 bits (``vpmaddubsw``), which saturates with full 8-bit ranges
    #: (ONNX Runtime's quantisation docs); one bit less keeps the sums in range.
    reduce_range: bool = False
    #: Leading convolutions (and every node before them) kept in float.
    float_prefix_convs: int = 1
    #: Further layers kept in float, named by the module whose ``<module>.weight`` initialiser
    #: they read (``model.conv_head``, ``model.classifier``): stable across re-exports, unlike
    #: node names.
    float_modules: tuple[str, ...] = ()
    #: Run ``HardSigmoid`` as an integer ``QLinearMul`` (:func:`~wastesort.variants.int8_graph.hard_sigmoid_as_requantize`).
    integer_hard_sigmoid: bool = False
    #: Spatial ``ReduceMean`` as ``GlobalAveragePool`` (integer ``QLinearGlobalAveragePool``).
    global_pool: bool = False
    #: Quantise the copy of the weights fine-tuned for INT8 (``make qat``,
    #: :attr:`~wastesort.shipped.ShippedModel.qat_onnx`) instead of the FP32 export
    #: (:func:`int8_source`); FP32 stays the served model and the gate's reference.
    qat_weights: bool = False

    def describe(self) -> str:
        where = f", {self.percentile:g} pct" if self.method == "Percentile" else ""
        weights = f"{self.weight[1:]}{' (7-bit)' if self.reduce_range else ''}"
        parts = [f"QDQ {'per-channel' if self.per_channel else 'per-tensor'} {self.activation[1:]}/{weights} {self.method}{where}"]
        if self.exclude_ops:
            parts.append(f"float {'/'.join(self.exclude_ops)}")
        if self.only_ops:
            parts.append(f"only {'/'.join(self.only_ops)}")
        if self.integer_hard_sigmoid:
            parts.append("integer HardSigmoid")
        if self.global_pool:
            parts.append("pool as GlobalAveragePool")
        if self.float_prefix_convs:
            convs = "conv" if self.float_prefix_convs == 1 else f"{self.float_prefix_convs} convs"
            parts.append(f"first {convs} in float")
        if self.float_modules:
            parts.append(f"{', '.join(map(layer_label, self.float_modules))} in float")
        if self.qat_weights:
            parts.append("QAT weights")
        return ", ".join(parts)


#: MobileNetV3-Small: h-swish and squeeze-excite run as integer ops, the stem and the first two
#: blocks (8 convolutions at 80x80 and 40x40) stay in float, percentile 99.95 calibration.
#: Without these rewrites ONNX Runtime converts the activations to float and back around every
#: h-swish and pool, and INT8 runs slower than FP32.
MOBILENET_V3_INT8 = Int8Settings(method="Percentile", percentile=99.95, float_prefix_convs=8, integer_hard_sigmoid=True, global_pool=True)

#: EfficientNet-Lite0: the stem and block 0 (its depthwise and pointwise convolutions, the first
#: three convolutions) in float, percentile 99.999 calibration, quantising the QAT weights
#: (``make qat``): :func:`pick_int8`'s choice in the Lite0 sweep (``experiments/int8_settings/``),
#: the lowest val logit error against FP32 at the same speed.
EFFICIENTNET_LITE0_INT8 = Int8Settings(float_prefix_convs=3, method="Percentile", percentile=99.999, qat_weights=True)

#: The settings ``make build`` quantises each network with; others get :class:`Int8Settings`'s defaults.
INT8_BY_NET: dict[str, Int8Settings] = {FROM_SCRATCH_NET: MOBILENET_V3_INT8, DEFAULT_NET: EFFICIENTNET_LITE0_INT8}

#: Settings whose throughput is within this fraction of the fastest INT8 candidate count as equally
#: fast: the 2-thread figures move by about 5% from run to run on a shared 2-core machine.
INT8_SPEED_BAND = 0.10


def int8_settings(net: str) -> Int8Settings:
    """The INT8 settings chosen for ``net``."""
    return INT8_BY_NET.get(net, Int8Settings())


def int8_source(model: ShippedModel, settings: Int8Settings) -> tuple[Path, str]:
    """The ONNX file ``settings`` quantise for ``model``, and a note saying which.

    With ``qat_weights``, the QAT copy if it is current; if it is missing or was fine-tuned
    from another export, the FP32 export, and the note says why (so ``make build`` after a new
    ``make release`` still builds, reports the fallback, and the gate judges the result)."""
    if not settings.qat_weights:
        return model.onnx, f"from {model.onnx.name}"
    problem = model.qat_problem()
    if problem:
        return model.onnx, f"from {model.onnx.name}, NOT the QAT weights ({problem}: run make qat)"
    return model.qat_onnx, f"from the QAT weights {model.qat_onnx.name}"


def pick_int8(measured: dict[str, tuple[float, float]], band: float = INT8_SPEED_BAND) -> str:
    """The rule that chooses a network's INT8 settings from a sweep: among the candidates whose
    throughput is within ``band`` of the fastest, the one with the lowest validation logit MSE
    against FP32. ``measured`` maps a candidate's name to ``(img/s, val logit MSE)``.

    Accuracy is read as logit error on the validation split, not as top-1 on a few hundred
    photos, where one photo is a third of a point; speed only separates candidates beyond the
    timing noise (picking the plain fastest made the choice a coin toss between settings that
    run equally fast)."""
    if not measured:
        raise ValueError("no INT8 candidates to choose from")
    fastest = max(img_s for img_s, _ in measured.values())
    fast = {name: mse for name, (img_s, mse) in measured.items() if img_s >= (1.0 - band) * fastest}
    return min(fast, key=fast.__getitem__)


def one_more_float_layer(settings: Int8Settings, modules: list[str]) -> dict[str, Int8Settings]:
    """For each of ``modules`` (a network's weighted layers in graph order, as
    :func:`~wastesort.variants.int8_graph.weighted_modules` names them) that ``settings`` still
    quantise, ``settings`` with that layer kept in float as well: the per-layer sensitivity scan."""
    quantized = [m for m in modules[settings.float_prefix_convs :] if m not in settings.float_modules]
    return {m: replace(settings, float_modules=(*settings.float_modules, m)) for m in quantized}


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray, settings: Int8Settings = Int8Settings()) -> Path:
    """Static INT8 QDQ model calibrated on ``calibration`` (float32 ``(N, 3, H, W)``, produced by
    the serving preprocessing). Runs ONNX Runtime's recommended pre-processing first, then the
    graph rewrites the settings ask for (:mod:`wastesort.variants.int8_graph`)."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        model = int8_graph.name_nodes(onnx.load(str(prepared)))
        if settings.global_pool:
            int8_graph.reduce_mean_as_global_pool(model)
        onnx.save(model, str(prepared))
        input_name = model.graph.input[0].name
        excluded = [n.name for n in model.graph.node if n.op_type in settings.exclude_ops]
        excluded += int8_graph.float_prefix(model, settings.float_prefix_convs)
        excluded += int8_graph.float_head(model)
        excluded += [n.name for n in model.graph.node if n.name.startswith(TYPICALITY_PREFIX)]
        excluded += int8_graph.reading_weights(model, [f"{m}.weight" for m in settings.float_modules])
        extra: dict[str, object] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if settings.method == "Percentile":
            extra["CalibPercentile"] = settings.percentile
        quantize_static(
            str(prepared),
            str(dst),
            ArrayCalibrationReader(input_name, calibration, settings.calibration_batch),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            activation_type=getattr(QuantType, settings.activation),
            weight_type=getattr(QuantType, settings.weight),
            calibrate_method=getattr(CalibrationMethod, settings.method),
            nodes_to_exclude=sorted(set(excluded)),
            reduce_range=settings.reduce_range,
            op_types_to_quantize=list(settings.only_ops) or None,
            extra_options=extra,
        )
    if settings.integer_hard_sigmoid:
        model = onnx.load(str(dst))
        if int8_graph.hard_sigmoid_as_requantize(model):
            onnx.save(model, str(dst))
    _restore_metadata(dst, _metadata(src))
    onnx.checker.check_model(str(dst))
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and activations for GPU execution, FP32 inputs and outputs kept
    (``keep_io_types``) so the FP32 ``preprocess`` output still feeds it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.topological_sort()  # the converter appends its input casts at the end of the node list
    onnx.save(model.model, str(dst))
    _restore_metadata(dst, _metadata(src))
    onnx.checker.check_model(str(dst))
    return dst
