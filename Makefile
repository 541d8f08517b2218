# Single entry point. `make setup` once, then `make demo` / `make test`.
# Every target that needs Python depends on setup, which is idempotent.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PY      := $(BIN)/python
STAMP   := $(VENV)/.installed

# train / export knobs (override on the command line: make train DATA=... MODEL=resnet18)
DATA    ?=
# MODEL: a network name (empty: the shipped default, owned by src/wastesort/shipped.py)
MODEL   ?=
NET_ARG  = $(if $(MODEL),--net $(MODEL))
RUN     ?= runs/$(or $(MODEL),latest)
MODEL_ONNX = $(if $(MODEL),models/$(MODEL).onnx)
TRAIN_ARGS ?=
BUILD_ARGS ?=
PERF_ARGS  ?=
RELIABILITY_ARGS ?=
SCALE_ARGS ?=
SWEEP_ARGS ?=
EXPLAIN_ARGS ?=
COMPRESS_ARGS ?=
QAT_ARGS ?=

# serving knobs (make serve TRITON_HTTP_PORT=9000 ...); the server binds to 127.0.0.1 unless
# TRITON_ADDRESS says otherwise
export TRITON_HTTP_PORT    ?= 8000
export TRITON_GRPC_PORT    ?= 8001
export TRITON_METRICS_PORT ?= 8002

.PHONY: setup test test-fast test-experiments lint demo adapt train sweep explain compress export soup release qat evaluate repository build serve perf perf-quick perf-gpu model-analyzer reliability reliability-quick scale-demo clean help

help:
	@echo "make setup                  create $(VENV) with every dependency (idempotent)"
	@echo "make test                   ruff + the whole product test suite (CPU, no dataset needed; what CI runs)"
	@echo "make test-fast              ruff + the tests without servers, soaks or multi-epoch training (the inner loop)"
	@echo "make test-experiments       the studies' own tests (experiments/)"
	@echo "make demo [DATA=dir]        whole pipeline so far: data -> train -> export -> verify -> evaluate"
	@echo "make train DATA=dir [MODEL=...] [TRAIN_ARGS=...]   train into runs/MODEL"
	@echo "make export RUN=runs/name   export RUN/best.pt to RUN/model.onnx and verify it"
	@echo "make sweep [DATA=dir] [SWEEP_ARGS=...]  Optuna TPE + Hyperband sweep (SimpleCNN, CPU budget under an hour) -> docs/sweep/<study>/"
	@echo "make explain [MODEL=...]    Captum report (grid, filters, feature maps, Grad-CAM, guided backprop) -> docs/explain/"
	@echo "make compress [RUN=runs/name]  sensitivity scan, pruning, k-means clustering, gate, size table -> docs/compression.md"
	@echo "make soup INGREDIENTS=\"a b\" RUN=runs/name  average fine-tuned Lite models (runs or models/<net>.onnx) into a run (greedy soup)"
	@echo "make release RUN=runs/name  promote a run (or a make adapt folder): models/<net>.* (ONNX, TTA, manifest, metrics), MODEL_CARD.md, model_repository/"
	@echo "                            RELEASE_ARGS=\"--decoder turbo\": serve a Pillow-trained model through libjpeg-turbo + OpenCV"
	@echo "make adapt DATA=site OUT=runs/name  fine-tune the shipped model on a site's labelled photos (any of the six class folders)"
	@echo "make qat [DATA=dir]         fine-tune models/MODEL.onnx for INT8 (QAT) -> models/<net>.qat.onnx, which make build quantises"
	@echo "make evaluate DATA=dir      evaluate models/MODEL.onnx on every image of DATA"
	@echo "make repository [MODEL=...] (re)generate model_repository/ from models/MODEL.onnx"
	@echo "make build [DATA=dir]       precision variants of models/MODEL.onnx, accuracy gate, report, install the passing ones"
	@echo "make serve                  tritonserver on model_repository/, foreground, 127.0.0.1:8000 (http) 8001 (grpc) 8002 (metrics)"
	@echo "make model-analyzer [DATA=dir]  Triton Model Analyzer (own venv) on the default ensemble, vs the hand-tuned config"
	@echo "make perf [DATA=dir]        throughput table: in-process rows + perf_analyzer sweep, into perf/results/<host>/"
	@echo "make perf-quick [DATA=dir]  the same, short (about 4 minutes on 2 cores)"
	@echo "make perf-gpu [DATA=dir]    GPU rows: both models (MODEL=...: one) in PyTorch on CUDA at batch 1/8/64 -> perf/results/<host>-gpu/"
	@echo "make reliability            bad-input matrix, 10-minute soak, injected faults; docs/reliability.md (about 15 minutes)"
	@echo "make reliability-quick      the same with a 1-minute soak (about 6 minutes)"
	@echo "make scale-demo             2 replicas behind HAProxy + Prometheus on loopback: failover, drain, autoscaling signal (about 6 minutes)"

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/system_deps.sh
	bash scripts/system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,serve,variants,perf,deploy,dev]"
	$(PY) -c "import torch, torchvision, onnxruntime, tritonclient.grpc, wastesort; print('setup ok: torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__)"
	$(PY) -m wastesort.triton.server --print-command
	touch $@

lint: setup
	$(BIN)/ruff check src train build client perf reliability deploy tests experiments

test: lint
	$(BIN)/pytest -q

# the inner loop: what starts no tritonserver and trains no more than a few short epochs
test-fast: lint
	$(BIN)/pytest -q -m "not server and not slow"

test-experiments: setup
	$(BIN)/pytest -q experiments

demo: setup
	bash scripts/demo.sh "$(DATA)"

train: setup
	@test -n "$(DATA)" || { echo "usage: make train DATA=path/to/imagefolder [MODEL=net] [RUN=runs/name] [TRAIN_ARGS=...]"; exit 2; }
	$(PY) train/train.py --data "$(DATA)" $(if $(MODEL),--model $(MODEL)) --out $(RUN) $(TRAIN_ARGS)

sweep: setup
	$(PY) train/sweep.py $(if $(DATA),--data "$(DATA)") $(SWEEP_ARGS)

explain: setup
	$(PY) train/explain.py $(NET_ARG) $(if $(DATA),--data "$(DATA)") $(EXPLAIN_ARGS)

# RUN only when given on the command line (its default names a training folder for make train)
compress: setup
	$(PY) train/compress.py $(if $(filter command line,$(origin RUN)),--run $(RUN)) $(if $(DATA),--data "$(DATA)") $(COMPRESS_ARGS)

soup: setup
	@test -n "$(INGREDIENTS)" -a -n "$(filter command line,$(origin RUN))" || { echo "usage: make soup INGREDIENTS=\"runs/a models/<net>.onnx\" RUN=runs/<name> [DATA=dir] [SOUP_ARGS=...]"; exit 2; }
	$(PY) train/soup.py --ingredients $(INGREDIENTS) --out $(RUN)$(if $(MODEL), --model $(MODEL))$(if $(DATA), --data "$(DATA)") $(SOUP_ARGS)

release: setup
	@test -n "$(RUN)" && { test -f "$(RUN)/best.pt" || test -f "$(RUN)/report.json"; } || { echo "usage: make release RUN=runs/<name> (a finished run, or a make adapt folder)"; exit 2; }
	$(PY) train/release.py --run $(RUN) $(RELEASE_ARGS)

adapt: setup
	@test -n "$(DATA)" -a -n "$(OUT)" || { echo "usage: make adapt DATA=path/to/site_photos OUT=runs/<name> [ADAPT_ARGS=...]"; exit 2; }
	$(PY) train/adapt.py --data "$(DATA)" --out "$(OUT)" $(ADAPT_ARGS)

qat: setup
	$(PY) train/qat.py $(NET_ARG) $(if $(DATA),--data "$(DATA)") $(QAT_ARGS)

export: setup
	$(PY) train/export.py --run $(RUN) --out $(RUN)/model.onnx

evaluate: setup
	@test -n "$(DATA)" || { echo "usage: make evaluate DATA=path/to/imagefolder"; exit 2; }
	$(PY) train/evaluate.py $(if $(MODEL_ONNX),--model $(MODEL_ONNX)) --data "$(DATA)"

repository: setup
	$(PY) build/repository.py $(if $(MODEL_ONNX),--onnx $(MODEL_ONNX))

build: setup
	$(PY) build/build.py $(NET_ARG) $(if $(DATA),--data "$(DATA)") $(BUILD_ARGS)

serve: setup
	$(PY) -m wastesort.triton.server

perf: setup
	$(PY) perf/run.py $(NET_ARG) $(if $(DATA),--data "$(DATA)") $(PERF_ARGS)

perf-quick: setup
	$(PY) perf/run.py --quick $(NET_ARG) $(if $(DATA),--data "$(DATA)") $(PERF_ARGS)

perf-gpu: setup
	$(PY) perf/gpu.py $(if $(MODEL),--nets $(MODEL)) $(if $(DATA),--data "$(DATA)") $(PERF_GPU_ARGS)

# Model Analyzer pins its own dependencies (optuna 3.6, tritonclient 2.73): its own environment
ANALYZER_VENV ?= .venv-analyzer
$(ANALYZER_VENV)/bin/model-analyzer:
	$(PYTHON) -m venv $(ANALYZER_VENV)
	$(ANALYZER_VENV)/bin/pip install -q "$$($(PY) -c 'from wastesort.perf.model_analyzer import ANALYZER_PACKAGE; print(ANALYZER_PACKAGE)')"

model-analyzer: setup $(ANALYZER_VENV)/bin/model-analyzer
	$(PY) perf/model_analyzer.py $(NET_ARG) $(if $(DATA),--data "$(DATA)") $(MA_ARGS)

reliability: setup
	$(PY) reliability/run.py $(if $(DATA),--data "$(DATA)") $(RELIABILITY_ARGS)

reliability-quick: setup
	$(PY) reliability/run.py --soak-minutes 1 $(if $(DATA),--data "$(DATA)") $(RELIABILITY_ARGS)

scale-demo: setup
	$(PY) deploy/scale_demo.py $(if $(DATA),--data "$(DATA)") $(SCALE_ARGS)

clean:
	rm -rf runs demo_out .pytest_cache .ruff_cache
