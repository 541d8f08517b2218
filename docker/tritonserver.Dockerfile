# NVIDIA's Triton server plus this project's package, which the Python-backend models import
# (preprocess on every deployment; the ONNX Runtime classifier on CPU-only deployments).
# RELEASE must match the build image: TensorRT plans only load in the TensorRT they were built with.
#
# Targets: "server" (docker-compose mounts model_repository/ at /models) and "serving" (the
# default, the last stage: model_repository/ copied to /models, for Kubernetes and KServe,
# deploy/k8s), both running as NVIDIA's non-root user triton-server.
ARG RELEASE=24.10
FROM nvcr.io/nvidia/tritonserver:${RELEASE}-py3 AS server
COPY pyproject.toml README.md /opt/wastesort/
COPY src /opt/wastesort/src
RUN pip install --no-cache-dir /opt/wastesort

FROM server AS serving
COPY --chown=1000:1000 model_repository /models
USER 1000:1000
