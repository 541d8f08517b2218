# NVIDIA's Triton server plus this project's package, which the Python-backend models import
# (preprocess on every deployment; the ONNX Runtime classifier on CPU-only deployments).
# RELEASE must match the build image: TensorRT plans only load in the TensorRT they were built with.
ARG RELEASE=24.10
FROM nvcr.io/nvidia/tritonserver:${RELEASE}-py3
COPY pyproject.toml README.md /opt/wastesort/
COPY src /opt/wastesort/src
RUN pip install --no-cache-dir /opt/wastesort
