"""Triton model configurations, built as tritonclient's ``ModelConfig`` protobuf messages.

Every ``config.pbtxt`` under ``model_repository/`` is written by :func:`write_repository`
(``build/repository.py``) from the exported ONNX model's own metadata (input size, labels,
preprocessing contract), and every one parses back into ``ModelConfig`` in the tests.

Tensor contract of the served models (N = batch, at most ``max_batch_size``):

* ``preprocess``: ``IMAGE_BYTES`` BYTES ``[N, 1]`` (encoded JPEG/PNG/...) ->
  ``IMAGES`` FP32 ``[N, 3, H, W]`` (RGB, ``(x/255 - mean)/std``).
* ``<net>_onnx``: ``IMAGES`` FP32 ``[N, 3, H, W]`` (``FORMAT_NCHW``) -> ``PROBABILITIES`` FP32
  ``[N, C]`` with ``labels.txt``: one input and one output, as NVIDIA's ``image_client.py``
  expects of a classifier (the ONNX file also computes ``LOGITS``; the config does not serve them).
* ``ensemble_<net>``: ``IMAGE_BYTES`` BYTES ``[N, 1]`` -> ``PROBABILITIES`` FP32 ``[N, C]``
  with ``labels.txt``, so ``class_count=k`` returns ``"score:index:label"`` strings. The
  ensemble the rule of :mod:`wastesort.triton.default` picked carries its parameter.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.confidence import read as read_confidence
from wastesort.contract import META_LABELS, META_PREPROCESSING, PreprocessContract
from wastesort.preprocess import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from wastesort.shipped import IMAGE_BYTES, IMAGES, PROBABILITIES, ShippedModel
from wastesort.triton.default import DEFAULT_PARAMETER
from wastesort.triton.naming import (
    COUNTED_AS_PARAMETER,
    PREPROCESS,
    TTA,
    answers_name,
    classifier_name,
    ensemble_name,
    ensemble_of,
    installed_file,
    variant_name,
)

LABELS_FILE = "labels.txt"
#: Custom config name (``tritonserver --model-config-name=gpu``) of the classifier's
#: ``onnxruntime_onnx`` configuration for NVIDIA's GPU containers.
GPU_CONFIG_NAME = "gpu"
#: Python-backend implementations the thin ``model.py`` files import.
PREPROCESS_IMPL = "wastesort.triton.preprocess_model"
ONNX_IMPL = "wastesort.triton.onnx_model"
ANSWERS_IMPL = "wastesort.triton.answers_model"
WARMUP_FILE = "jpeg_512x384"


@dataclass(frozen=True)
class ServingOptions:
    """Knobs shared by the generated configs.

    ``max_batch_size``: largest batch any model accepts (images per execution).
    ``queue_delay_us``: how long the dynamic batcher may hold a request to grow a batch. 0:
    it still batches every request that queued while the instance was busy, without making
    an idle server wait (perf_analyzer found no delay that paid on a CPU server).
    ``decode_threads`` / ``ort_threads``: 0 means one per core the server may use.
    ``ort_spinning``: let ONNX Runtime's idle workers spin-wait. Off: on a CPU server the
    classifier shares the cores with ``preprocess`` (another process), and spinning workers
    take them from the decoder.
    """

    max_batch_size: int = 64
    queue_delay_us: int = 0
    preprocess_instances: int = 1
    classifier_instances: int = 1
    decode_threads: int = 0
    ort_threads: int = 0
    ort_spinning: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = DEFAULT_MAX_BYTES


def _tensor(cls: type, name: str, dtype: int, dims: list[int], **kw: object) -> object:
    return cls(name=name, data_type=dtype, dims=dims, **kw)


def _latest_only(cfg: mc.ModelConfig) -> None:
    cfg.version_policy.latest.num_versions = 1


def _batching(cfg: mc.ModelConfig, opts: ServingOptions) -> None:
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us


def _params(cfg: mc.ModelConfig, values: dict[str, str]) -> None:
    for key, value in values.items():
        cfg.parameters[key].string_value = value


def image_dims(contract: PreprocessContract) -> list[int]:
    return [3, contract.height, contract.width]


def preprocess_config(contract: PreprocessContract, opts: ServingOptions = ServingOptions()) -> mc.ModelConfig:
    """Python-backend decoder: bytes -> the classifier's input. Carries the contract (the ONNX
    metadata entries, verbatim) in its parameters; warms up on a real JPEG."""
    cfg = mc.ModelConfig(name=PREPROCESS, backend="python", max_batch_size=opts.max_batch_size)
    _latest_only(cfg)
    cfg.input.append(_tensor(mc.ModelInput, IMAGE_BYTES, mc.TYPE_STRING, [1]))
    cfg.output.append(_tensor(mc.ModelOutput, IMAGES, mc.TYPE_FP32, image_dims(contract)))
    _batching(cfg, opts)
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=opts.preprocess_instances))
    meta = contract.to_metadata()
    _params(
        cfg,
        {
            META_LABELS: meta[META_LABELS],
            META_PREPROCESSING: meta[META_PREPROCESSING],
            "max_pixels": str(opts.max_pixels),
            "max_image_bytes": str(opts.max_image_bytes),
            "decode_threads": str(opts.decode_threads),
        },
    )
    warm = cfg.model_warmup.add(name="one_jpeg", batch_size=1)
    warm.inputs[IMAGE_BYTES].CopyFrom(mc.ModelWarmup.Input(data_type=mc.TYPE_STRING, dims=[1], input_data_file=WARMUP_FILE))
    return cfg


def _classifier_io(cfg: mc.ModelConfig, contract: PreprocessContract, opts: ServingOptions) -> None:
    _latest_only(cfg)
    cfg.input.append(_tensor(mc.ModelInput, IMAGES, mc.TYPE_FP32, image_dims(contract), format=mc.ModelInput.FORMAT_NCHW))
    classes = len(contract.labels)
    cfg.output.append(_tensor(mc.ModelOutput, PROBABILITIES, mc.TYPE_FP32, [classes], label_filename=LABELS_FILE))
    _batching(cfg, opts)
    for batch in sorted({1, opts.max_batch_size}):
        warm = cfg.model_warmup.add(name=f"zeros_batch_{batch}", batch_size=batch)
        warm.inputs[IMAGES].CopyFrom(mc.ModelWarmup.Input(data_type=mc.TYPE_FP32, dims=image_dims(contract), zero_data=True))


def _threshold(cfg: mc.ModelConfig, threshold: float | None) -> None:
    """Carry the unsure threshold of the served file (:mod:`wastesort.confidence`), if it has one."""
    if threshold is not None:
        _params(cfg, {THRESHOLD_PARAMETER: f"{threshold:.6g}"})


def classifier_python_config(
    net: str, contract: PreprocessContract, opts: ServingOptions = ServingOptions(), name: str | None = None, threshold: float | None = None
) -> mc.ModelConfig:
    """The classifier on CPU: ONNX Runtime inside a Python-backend model (``1/model.onnx``),
    which also counts its answers in Triton's metrics (``threshold``: when they are unsure)."""
    cfg = mc.ModelConfig(name=name or classifier_name(net), backend="python", max_batch_size=opts.max_batch_size)
    _classifier_io(cfg, contract, opts)
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=opts.classifier_instances))
    _params(cfg, {"onnx_file": "model.onnx", "intra_op_threads": str(opts.ort_threads), "allow_spinning": str(int(opts.ort_spinning))})
    _threshold(cfg, threshold)
    return cfg


def classifier_onnxruntime_config(
    net: str,
    contract: PreprocessContract,
    opts: ServingOptions = ServingOptions(),
    name: str | None = None,
    tensorrt_precision: str | None = None,
) -> mc.ModelConfig:
    """The same ``1/model.onnx`` on Triton's ``onnxruntime`` backend, on GPU (NVIDIA's containers).

    ``tensorrt_precision`` ("FP32"/"FP16"): let ONNX Runtime hand the graph to its TensorRT
    execution provider at that precision (engines are built on the first request and cached).
    """
    cfg = mc.ModelConfig(
        name=name or classifier_name(net),
        platform="onnxruntime_onnx",
        max_batch_size=opts.max_batch_size,
        default_model_filename="model.onnx",
    )
    _classifier_io(cfg, contract, opts)
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    if tensorrt_precision:
        accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accel.parameters["precision_mode"] = tensorrt_precision
        accel.parameters["max_workspace_size_bytes"] = str(1 << 30)
        accel.parameters["trt_engine_cache_enable"] = "1"
        accel.parameters["trt_engine_cache_path"] = "/tmp/trt_engine_cache"
    return cfg


def tensorrt_plan_config(name: str, contract: PreprocessContract, opts: ServingOptions = ServingOptions()) -> mc.ModelConfig:
    """A TensorRT plan (``1/model.plan``) built with an optimisation profile over 1..max_batch_size."""
    cfg = mc.ModelConfig(name=name, platform="tensorrt_plan", max_batch_size=opts.max_batch_size, default_model_filename="model.plan")
    _classifier_io(cfg, contract, opts)
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    return cfg


def answers_config(
    classifier: str, contract: PreprocessContract, opts: ServingOptions = ServingOptions(), threshold: float | None = None
) -> mc.ModelConfig:
    """The Python step that counts ``classifier``'s answers in the metrics when it runs on a GPU
    backend (:mod:`wastesort.triton.answers_model`): probabilities in, the same out."""
    cfg = mc.ModelConfig(name=answers_name(classifier), backend="python", max_batch_size=opts.max_batch_size)
    _latest_only(cfg)
    classes = len(contract.labels)
    cfg.input.append(_tensor(mc.ModelInput, PROBABILITIES, mc.TYPE_FP32, [classes]))
    cfg.output.append(_tensor(mc.ModelOutput, PROBABILITIES, mc.TYPE_FP32, [classes], label_filename=LABELS_FILE))
    _batching(cfg, opts)
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1))
    _params(cfg, {COUNTED_AS_PARAMETER: classifier})
    _threshold(cfg, threshold)
    return cfg


def ensemble_config(
    net: str,
    contract: PreprocessContract,
    opts: ServingOptions = ServingOptions(),
    classifier: str | None = None,
    default: bool = False,
    threshold: float | None = None,
    answers: bool = False,
) -> mc.ModelConfig:
    """Bytes in, probabilities (with labels) out: ``preprocess`` then ``classifier``
    (default ``<net>_onnx``, named ``ensemble_<net>``; a variant's is ``ensemble_<variant>``).
    ``default``: carry :data:`~wastesort.triton.default.DEFAULT_PARAMETER` (the rule's pick);
    ``threshold``: the classifier's unsure threshold, for clients; ``answers``: end with the
    classifier's answers step (a classifier on a GPU backend exports no metrics itself)."""
    classifier = classifier or classifier_name(net)
    name = ensemble_of(classifier)
    cfg = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=opts.max_batch_size)
    _latest_only(cfg)
    if default:
        _params(cfg, {DEFAULT_PARAMETER: "1"})
    _threshold(cfg, threshold)
    cfg.input.append(_tensor(mc.ModelInput, IMAGE_BYTES, mc.TYPE_STRING, [1]))
    cfg.output.append(_tensor(mc.ModelOutput, PROBABILITIES, mc.TYPE_FP32, [len(contract.labels)], label_filename=LABELS_FILE))
    pre = cfg.ensemble_scheduling.step.add(model_name=PREPROCESS, model_version=-1)
    pre.input_map[IMAGE_BYTES] = IMAGE_BYTES
    pre.output_map[IMAGES] = "preprocessed_images"
    clf = cfg.ensemble_scheduling.step.add(model_name=classifier, model_version=-1)
    clf.input_map[IMAGES] = "preprocessed_images"
    handoff = "classifier_probabilities" if answers else PROBABILITIES
    clf.output_map[PROBABILITIES] = handoff
    if answers:
        count = cfg.ensemble_scheduling.step.add(model_name=answers_name(classifier), model_version=-1)
        count.input_map[PROBABILITIES] = handoff
        count.output_map[PROBABILITIES] = PROBABILITIES
    return cfg


HEADER = "# Generated by build/repository.py from {source}; do not edit by hand (edit ServingOptions or the generator).\n"


def to_text(cfg: mc.ModelConfig, source: str) -> str:
    """``config.pbtxt`` text for a message, with a provenance header."""
    return HEADER.format(source=source) + text_format.MessageToString(cfg)


def parse_config(path: str | Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` into ``ModelConfig``; raises ``text_format.ParseError`` if invalid."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def serialize_bytes_tensor(items: list[bytes]) -> bytes:
    """Triton's raw BYTES layout (per element: uint32 little-endian length, then the bytes),
    the format of a warm-up ``input_data_file`` for TYPE_STRING."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def warmup_jpeg() -> bytes:
    """A deterministic 512x384 JPEG (TrashNet's size) for the preprocess warm-up."""
    import io

    import numpy as np

    from wastesort.synthetic import make_image

    buf = io.BytesIO()
    make_image("glass", np.random.default_rng(0), (512, 384)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


THIN_MODEL_PY = '''"""Triton Python-backend entry point of `{model}`; the implementation (and its contract) is
{impl} in the wastesort package, shared by every model that needs it."""

from {impl} import TritonPythonModel  # noqa: F401
'''


def _classifier_files(
    net: str,
    classifier: str,
    contract: PreprocessContract,
    opts: ServingOptions,
    source: str,
    backend: str,
    tensorrt_precision: str | None = None,
    default: bool = False,
    threshold: float | None = None,
) -> tuple[dict[str, bytes], str]:
    """Files of one classifier model and the ensemble that feeds it bytes (model file excluded),
    and the relative path the model file goes to.

    ``backend`` "onnxruntime": ``config.pbtxt`` runs it on CPU in the Python backend and
    ``configs/gpu.pbtxt`` on Triton's onnxruntime backend; "tensorrt": a ``tensorrt_plan``. On a
    GPU backend the ensemble ends with ``<classifier>_answers``, which counts the answers.
    """
    ensemble = ensemble_config(net, contract, opts, classifier=classifier, default=default, threshold=threshold)
    on_gpu = ensemble_config(net, contract, opts, classifier=classifier, default=default, threshold=threshold, answers=True)
    answers = answers_name(classifier)
    labels = ("\n".join(contract.labels) + "\n").encode()
    if backend == "onnxruntime":
        gpu = classifier_onnxruntime_config(net, contract, opts, name=classifier, tensorrt_precision=tensorrt_precision)
        text = {
            f"{classifier}/config.pbtxt": to_text(classifier_python_config(net, contract, opts, classifier, threshold), source),
            f"{classifier}/configs/{GPU_CONFIG_NAME}.pbtxt": to_text(gpu, source),
            f"{classifier}/1/model.py": THIN_MODEL_PY.format(model=classifier, impl=ONNX_IMPL),
            f"{ensemble.name}/config.pbtxt": to_text(ensemble, source),
            f"{ensemble.name}/configs/{GPU_CONFIG_NAME}.pbtxt": to_text(on_gpu, source),
        }
        target = f"{classifier}/1/model.onnx"
    elif backend == "tensorrt":  # only ever served on a GPU
        text = {
            f"{classifier}/config.pbtxt": to_text(tensorrt_plan_config(classifier, contract, opts), source),
            f"{ensemble.name}/config.pbtxt": to_text(on_gpu, source),
        }
        target = f"{classifier}/1/model.plan"
    else:
        raise ValueError(f"unknown backend {backend!r}")
    text[f"{ensemble.name}/1/.gitkeep"] = ""
    text[f"{answers}/config.pbtxt"] = to_text(answers_config(classifier, contract, opts, threshold), source)
    text[f"{answers}/1/model.py"] = THIN_MODEL_PY.format(model=answers, impl=ANSWERS_IMPL)
    files = {path: body.encode() for path, body in text.items()}
    for model in (classifier, ensemble.name, answers):
        files[f"{model}/{LABELS_FILE}"] = labels
    return files, target


def _write_files(repository: Path, files: dict[str, bytes]) -> list[Path]:
    written = []
    for rel, body in files.items():
        path = repository / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        written.append(path)
    return written


def _source(model_path: Path) -> str:
    """How a config's header names the file its model was copied from."""
    return f"models/{model_path.name}" if model_path.parent.name == "models" else model_path.name


def threshold_of(model_path: Path) -> float | None:
    """The unsure threshold an ONNX file carries (:func:`wastesort.confidence.read`), if calibrated."""
    confidence = read_confidence(model_path)
    return confidence.threshold if confidence else None


def committed_tta(onnx_path: Path, net: str) -> Path | None:
    """The TTA export beside ``onnx_path`` (``make release`` keeps one only when it beats the
    plain model on val), or ``None``: the committed repository serves it as ``<net>_onnx_tta``."""
    tta = ShippedModel(net, onnx_path.parent).tta_onnx
    return tta if tta.is_file() else None


def _models(onnx_path: Path, net: str) -> dict[str, Path]:
    """The classifiers the generated repository holds (name -> the ONNX file it copies)."""
    tta = committed_tta(onnx_path, net)
    return {classifier_name(net): onnx_path, **({variant_name(net, TTA): tta} if tta else {})}


def repository_files(onnx_path: Path, net: str, opts: ServingOptions = ServingOptions()) -> dict[str, bytes]:
    """Every generated file of the repository (relative path -> content), ONNX models excluded:
    ``preprocess``, the classifier and its ensemble, and the TTA classifier and its ensemble
    when the release kept one (:func:`committed_tta`)."""
    contract = PreprocessContract.from_onnx(str(onnx_path))
    source = _source(onnx_path)
    files = {
        f"{PREPROCESS}/config.pbtxt": to_text(preprocess_config(contract, opts), source).encode(),
        f"{PREPROCESS}/1/model.py": THIN_MODEL_PY.format(model=PREPROCESS, impl=PREPROCESS_IMPL).encode(),
        f"{PREPROCESS}/warmup/{WARMUP_FILE}": serialize_bytes_tensor([warmup_jpeg()]),
    }
    default = committed_default(onnx_path, net)
    for name, path in _models(onnx_path, net).items():
        marked = ensemble_of(name) == default
        files.update(_classifier_files(net, name, contract, opts, _source(path), "onnxruntime", None, marked, threshold_of(path))[0])
    return files


def committed_default(onnx_path: Path, net: str) -> str:
    """The committed ensemble the rule of :mod:`wastesort.triton.default` picks: the TTA one
    where :attr:`ShippedModel.serves_tta <wastesort.shipped.ShippedModel.serves_tta>`, else the plain one."""
    return ensemble_of(variant_name(net, TTA)) if ShippedModel(net, onnx_path.parent).serves_tta else ensemble_name(net)


def write_repository(repository: Path, onnx_path: Path, net: str, opts: ServingOptions = ServingOptions()) -> list[Path]:
    """Write the configs, thin ``model.py`` files, labels and warm-up data, and copy the ONNX
    model to ``<net>_onnx/1/model.onnx``. Models of another network (and their variants) are
    removed: ``preprocess`` now carries this network's contract and would not feed them.
    Returns the paths written."""
    for stale in stale_models(repository, net):
        shutil.rmtree(repository / stale)
    models = _models(onnx_path, net)
    if variant_name(net, TTA) not in models:  # the release dropped its TTA model
        remove_variant(repository, variant_name(net, TTA))
    written = _write_files(repository, repository_files(onnx_path, net, opts))
    for name, source in models.items():
        model = installed_file(repository, name)
        if not model.exists() or model.read_bytes() != source.read_bytes():
            shutil.copyfile(source, model)
        written.append(model)
    return written


def stale_models(repository: Path, net: str) -> list[str]:
    """Model folders in ``repository`` that belong to a network other than ``net``."""
    if not repository.is_dir():
        return []
    ours = (classifier_name(net), ensemble_name(net), f"{net}_", f"{ensemble_name(net)}_")
    return sorted(
        d.name
        for d in repository.iterdir()
        if (d / "config.pbtxt").is_file() and d.name != PREPROCESS and not any(d.name == o or d.name.startswith(o) for o in ours)
    )


def write_variant(
    repository: Path,
    net: str,
    variant: str,
    model_path: Path,
    contract: PreprocessContract,
    backend: str,
    opts: ServingOptions = ServingOptions(),
    tensorrt_precision: str | None = None,
    default: bool = False,
    threshold: float | None = None,
) -> list[Path]:
    """Install one precision variant as ``<variant>/`` plus ``ensemble_<variant>/`` (``backend``
    "onnxruntime" or "tensorrt", as in the base classifier's files; ``default``: the ensemble
    carries the rule's mark; ``threshold``: the unsure threshold, by default the one an ONNX
    ``model_path`` carries)."""
    if threshold is None and model_path.suffix == ".onnx":
        threshold = threshold_of(model_path)
    files, target = _classifier_files(net, variant, contract, opts, _source(model_path), backend, tensorrt_precision, default, threshold)
    remove_variant(repository, variant)
    written = _write_files(repository, files)
    (repository / target).parent.mkdir(parents=True, exist_ok=True)  # a plan's version folder holds nothing else
    shutil.copyfile(model_path, repository / target)
    return [*written, repository / target]


def remove_variant(repository: Path, variant: str) -> None:
    """Take a variant (its ensemble and answers step too) out of the repository, if present."""
    for name in (variant, ensemble_of(variant), answers_name(variant)):
        if (repository / name).is_dir():
            shutil.rmtree(repository / name)


def check_repository(repository: Path, onnx_path: Path, net: str, opts: ServingOptions = ServingOptions()) -> list[str]:
    """Differences between the repository on disk and what the generator would write (empty: in sync)."""
    problems = []
    for rel, body in repository_files(onnx_path, net, opts).items():
        path = repository / rel
        if not path.exists():
            problems.append(f"missing {rel}")
        elif path.read_bytes() != body:
            problems.append(f"differs from the generator: {rel}")
    models = _models(onnx_path, net)
    for name, source in models.items():
        model = installed_file(repository, name)
        if not model.exists() or model.read_bytes() != source.read_bytes():
            problems.append(f"{model.relative_to(repository)} is not a copy of {source}")
    if variant_name(net, TTA) not in models and (repository / variant_name(net, TTA)).is_dir():
        problems.append(f"{variant_name(net, TTA)} is served but there is no TTA export beside {onnx_path}")
    return problems


def contract_from_config(cfg: mc.ModelConfig) -> PreprocessContract:
    """The preprocessing contract a ``preprocess`` config carries in its parameters."""
    return PreprocessContract.from_metadata({k: v.string_value for k, v in cfg.parameters.items()})


def marked_default(repository: Path, ensemble: str) -> bool:
    """Whether ``ensemble``'s config on disk carries the rule's mark (:func:`wastesort.triton.default.choose` reads it)."""
    path = repository / ensemble / "config.pbtxt"
    return path.is_file() and parse_config(path).parameters[DEFAULT_PARAMETER].string_value == "1"


def set_default_mark(repository: Path, ensemble: str, on: bool) -> None:
    """Add or remove the rule's mark in an installed ensemble's configs (``config.pbtxt`` and
    the GPU one), keeping their headers."""
    for path in (repository / ensemble / "config.pbtxt", repository / ensemble / "configs" / f"{GPU_CONFIG_NAME}.pbtxt"):
        if not path.is_file():
            continue
        header, cfg = path.read_text().splitlines(keepends=True)[0], parse_config(path)
        if on:
            cfg.parameters[DEFAULT_PARAMETER].string_value = "1"
        else:
            cfg.parameters.pop(DEFAULT_PARAMETER, None)
        path.write_text(header + text_format.MessageToString(cfg))
