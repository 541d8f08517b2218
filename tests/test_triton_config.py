"""The model repository: every config parses as tritonclient's ModelConfig, is what the
generator writes from the committed model, and agrees with the model and with the other configs."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.contract import PreprocessContract
from wastesort.paths import REPO_ROOT
from wastesort.shipped import DEFAULT_NET, PROBABILITIES, ShippedModel
from wastesort.triton import config as tc
from wastesort.triton.default import DEFAULT_PARAMETER
from wastesort.triton.naming import COUNTED_AS_PARAMETER, TTA, answers_name, ensemble_of, variant_name
from wastesort.triton.server import DEFAULT_ADDRESS, server_command

REPOSITORY = REPO_ROOT / "model_repository"
ONNX = ShippedModel().onnx
NET = DEFAULT_NET
CONFIG_FILES = sorted(REPOSITORY.glob("*/config.pbtxt")) + sorted(REPOSITORY.glob("*/configs/*.pbtxt"))


def _configs() -> dict[str, mc.ModelConfig]:
    return {path.parent.name: tc.parse_config(path) for path in REPOSITORY.glob("*/config.pbtxt")}


def test_repository_has_the_three_roles() -> None:
    """The committed models (and the TTA classifier when the release kept one); anything else is a
    variant ``make build`` installed (untracked)."""
    names = set(_configs())
    assert {"preprocess", f"{NET}_onnx", f"ensemble_{NET}"} <= names
    assert answers_name(f"{NET}_onnx") in names  # the GPU ensemble's answers step
    variants = names - {"preprocess", f"{NET}_onnx", f"ensemble_{NET}", answers_name(f"{NET}_onnx")}
    pattern = rf"(ensemble_)?{NET}_(onnx|trt)_(fp32|fp16|int8|tta|int8_tta)|{NET}_(onnx|trt)_(fp32|fp16|int8|tta|int8_tta)_answers"
    assert all(re.fullmatch(pattern, name) for name in variants), variants
    assert (REPOSITORY / f"{NET}_onnx" / "configs" / "gpu.pbtxt").is_file()
    assert (REPOSITORY / f"ensemble_{NET}" / "configs" / "gpu.pbtxt").is_file()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_every_config_parses_and_is_complete(path: Path) -> None:
    cfg = tc.parse_config(path)
    assert cfg.name == path.parent.name if path.name == "config.pbtxt" else cfg.name == path.parent.parent.name
    assert cfg.max_batch_size > 0
    assert cfg.version_policy.latest.num_versions == 1
    assert all(t.name.isupper() for t in [*cfg.input, *cfg.output])
    if cfg.platform == "ensemble":  # the GPU one ends with the answers step
        assert len(cfg.ensemble_scheduling.step) == (3 if path.parent.name == "configs" else 2)
        return
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == tc.ServingOptions().queue_delay_us
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count >= 1
    assert len(cfg.model_warmup) >= 1 or cfg.name.endswith("_answers")  # nothing to warm up in a counter


def test_repository_is_in_sync_with_the_generator() -> None:
    """Configs, thin model.py files, labels and warm-up data are exactly what build/repository.py
    writes from the committed model, and 1/model.onnx is a copy of it."""
    assert tc.check_repository(REPOSITORY, ONNX, NET) == []


def test_the_tta_classifier_is_served_exactly_when_the_release_kept_one(tmp_path: Path) -> None:
    """``make release`` commits ``<net>.tta.onnx`` only when TTA beats the plain model on val;
    the repository then holds ``<net>_onnx_tta`` and its ensemble (a copy of that file), and
    loses them when a later release drops it."""
    tta = variant_name(NET, TTA)
    assert (REPOSITORY / tta).is_dir() == ShippedModel().tta_onnx.is_file()
    models = tmp_path / "models"
    models.mkdir()
    plain = models / ONNX.name
    plain.write_bytes(ONNX.read_bytes())
    repo = tmp_path / "repo"
    tc.write_repository(repo, plain, NET)
    assert not (repo / tta).exists() and tc.check_repository(repo, plain, NET) == []
    shipped_tta = ShippedModel(NET, models).tta_onnx
    shipped_tta.write_bytes(plain.read_bytes())  # any classifier file stands in for the TTA export here
    assert any("missing" in p for p in tc.check_repository(repo, plain, NET))
    tc.write_repository(repo, plain, NET)
    assert tc.check_repository(repo, plain, NET) == []
    assert (repo / tta / "1" / "model.onnx").read_bytes() == shipped_tta.read_bytes()
    assert tc.parse_config(repo / ensemble_of(tta) / "config.pbtxt").ensemble_scheduling.step[1].model_name == tta
    shipped_tta.unlink()
    assert any("no TTA export" in p for p in tc.check_repository(repo, plain, NET))
    tc.write_repository(repo, plain, NET)
    assert not (repo / tta).exists() and not (repo / ensemble_of(tta)).exists()
    assert tc.check_repository(repo, plain, NET) == []


def test_check_mode_catches_drift(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tc.write_repository(repo, ONNX, NET)
    assert tc.check_repository(repo, ONNX, NET) == []
    cfg_path = repo / "preprocess" / "config.pbtxt"
    cfg_path.write_text(cfg_path.read_text().replace("max_batch_size: 64", "max_batch_size: 8"))
    (repo / f"{NET}_onnx" / "1" / "model.onnx").write_bytes(b"not the model")
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build" / "repository.py"), "--check", "--repository", str(repo)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "preprocess/config.pbtxt" in result.stderr and "model.onnx" in result.stderr


def test_preprocess_carries_the_models_contract() -> None:
    contract = PreprocessContract.from_onnx(str(ONNX))
    cfgs = _configs()
    assert tc.contract_from_config(cfgs["preprocess"]) == contract
    assert list(cfgs["preprocess"].output[0].dims) == [3, contract.height, contract.width]
    labels = (REPOSITORY / f"ensemble_{NET}" / "labels.txt").read_text().splitlines()
    assert tuple(labels) == contract.labels
    assert (REPOSITORY / f"{NET}_onnx" / "labels.txt").read_text().splitlines() == labels


def test_ensemble_wiring_matches_the_composing_models() -> None:
    cfgs = _configs()
    ens = cfgs[f"ensemble_{NET}"]
    pre, clf = (cfgs[step.model_name] for step in ens.ensemble_scheduling.step)
    assert (pre.name, clf.name) == ("preprocess", f"{NET}_onnx")
    # bytes in, same declaration as the preprocess input; probabilities out, with labels
    assert (ens.input[0].name, ens.input[0].data_type, list(ens.input[0].dims)) == (pre.input[0].name, mc.TYPE_STRING, [1])
    out = ens.output[0]
    clf_out = {o.name: o for o in clf.output}[out.name]
    assert (out.data_type, list(out.dims), out.label_filename) == (clf_out.data_type, list(clf_out.dims), "labels.txt")
    # the tensor handed from step 1 to step 2 has the same name, type and shape on both sides
    step1, step2 = ens.ensemble_scheduling.step
    handoff = step1.output_map[pre.output[0].name]
    assert step2.input_map[clf.input[0].name] == handoff
    assert (pre.output[0].data_type, list(pre.output[0].dims)) == (clf.input[0].data_type, list(clf.input[0].dims))
    assert ens.max_batch_size <= min(pre.max_batch_size, clf.max_batch_size)


def test_gpu_config_serves_the_same_model_file_with_the_same_interface() -> None:
    cpu = _configs()[f"{NET}_onnx"]
    gpu = tc.parse_config(REPOSITORY / f"{NET}_onnx" / "configs" / "gpu.pbtxt")
    assert (cpu.backend, gpu.platform, gpu.default_model_filename) == ("python", "onnxruntime_onnx", "model.onnx")
    assert cpu.parameters["onnx_file"].string_value == gpu.default_model_filename
    assert gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert cpu.input == gpu.input and cpu.output == gpu.output and cpu.max_batch_size == gpu.max_batch_size


def test_the_gpu_ensemble_counts_through_the_answers_step_with_the_classifiers_threshold() -> None:
    """On a GPU the classifier's backend exports no custom metrics: the ensemble's GPU config hands
    its probabilities through ``<classifier>_answers``, which counts them under the classifier's
    name with the same threshold, and passes on the same tensor (name, type, shape, labels)."""
    cfgs = _configs()
    classifier, answers = cfgs[f"{NET}_onnx"], cfgs[answers_name(f"{NET}_onnx")]
    cpu, gpu = cfgs[f"ensemble_{NET}"], tc.parse_config(REPOSITORY / f"ensemble_{NET}" / "configs" / "gpu.pbtxt")
    assert [s.model_name for s in gpu.ensemble_scheduling.step] == ["preprocess", classifier.name, answers.name]
    assert (gpu.input, gpu.output, gpu.parameters) == (cpu.input, cpu.output, cpu.parameters)  # mark and threshold included
    handoff = gpu.ensemble_scheduling.step[1].output_map[PROBABILITIES]
    assert gpu.ensemble_scheduling.step[2].input_map[PROBABILITIES] == handoff != PROBABILITIES
    assert gpu.ensemble_scheduling.step[2].output_map[PROBABILITIES] == PROBABILITIES
    assert list(answers.input[0].dims) == list(classifier.output[0].dims) and answers.output == classifier.output
    assert answers.parameters[COUNTED_AS_PARAMETER].string_value == classifier.name
    assert answers.parameters[THRESHOLD_PARAMETER] == classifier.parameters[THRESHOLD_PARAMETER]
    assert answers.backend == "python" and answers.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU


def test_the_default_mark_moves_in_both_ensemble_configs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tc.write_repository(repo, ONNX, NET)
    ensemble = f"ensemble_{NET}"
    for on in (False, True):
        tc.set_default_mark(repo, ensemble, on)
        for path in (repo / ensemble / "config.pbtxt", repo / ensemble / "configs" / "gpu.pbtxt"):
            assert (tc.parse_config(path).parameters[DEFAULT_PARAMETER].string_value == "1") == on, path


def test_thin_model_files_import_the_shared_implementations() -> None:
    for model, impl in (("preprocess", tc.PREPROCESS_IMPL), (f"{NET}_onnx", tc.ONNX_IMPL), (answers_name(f"{NET}_onnx"), tc.ANSWERS_IMPL)):
        text = (REPOSITORY / model / "1" / "model.py").read_text()
        assert f"from {impl} import TritonPythonModel" in text
        assert (REPO_ROOT / "src" / (impl.replace(".", "/") + ".py")).is_file()


def test_warmup_file_is_one_serialized_jpeg() -> None:
    cfg = _configs()["preprocess"]
    warm = cfg.model_warmup[0]
    data = (REPOSITORY / "preprocess" / "warmup" / warm.inputs["IMAGE_BYTES"].input_data_file).read_bytes()
    (length,) = struct.unpack("<I", data[:4])
    assert length == len(data) - 4 and warm.batch_size == 1
    with Image.open(io.BytesIO(data[4:])) as img:
        assert (img.format, img.size) == ("JPEG", (512, 384))


def test_generator_follows_the_models_metadata(tmp_path: Path) -> None:
    """Other input sizes and label sets flow into every config (no hard-coded 160 or 6)."""
    contract = PreprocessContract(height=96, width=128, resize="center_crop", labels=("a", "b", "c"))
    opts = tc.ServingOptions(max_batch_size=16)
    assert list(tc.preprocess_config(contract, opts).output[0].dims) == [3, 96, 128]
    clf = tc.classifier_python_config("tiny", contract, opts)
    # one input and one output (what NVIDIA's image_client.py expects of a classifier), labelled
    assert [(o.name, list(o.dims), o.label_filename) for o in clf.output] == [("PROBABILITIES", [3], tc.LABELS_FILE)]
    assert [i.format for i in clf.input] == [mc.ModelInput.FORMAT_NCHW] and clf.max_batch_size == 16
    assert sorted(w.batch_size for w in clf.model_warmup) == [1, 16]
    ens = tc.ensemble_config("tiny", contract, opts)
    assert ens.name == "ensemble_tiny" and ens.ensemble_scheduling.step[1].model_name == "tiny_onnx"
    text = tc.to_text(ens, "tiny.onnx")
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    assert tc.parse_config(path) == ens


def test_server_binds_to_loopback_with_model_control_none() -> None:
    cmd = server_command(REPOSITORY, {"http": 1, "grpc": 2, "metrics": 3})
    assert f"--http-address={DEFAULT_ADDRESS}" in cmd and f"--grpc-address={DEFAULT_ADDRESS}" in cmd
    assert f"--metrics-address={DEFAULT_ADDRESS}" in cmd and "--model-control-mode=none" in cmd
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3"} <= set(cmd)
    assert Path(cmd[0]).is_file()


def test_make_serve_ports_come_from_the_environment() -> None:
    env = {"TRITON_HTTP_PORT": "9100", "TRITON_GRPC_PORT": "9101", "TRITON_METRICS_PORT": "9102", "PATH": "/usr/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "wastesort.triton.server", "--print-command"], env=env, capture_output=True, text=True, check=True
    )
    assert "--http-port=9100" in out.stdout and "--grpc-port=9101" in out.stdout and "--metrics-port=9102" in out.stdout
    assert "--http-address=127.0.0.1" in out.stdout
