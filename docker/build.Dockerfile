# NVIDIA's TensorRT container of the same release as the server (same TensorRT version), with
# this project's build tools: ONNX Runtime quantisation, Polygraphy, scikit-learn, tritonclient.
ARG RELEASE=24.10
FROM nvcr.io/nvidia/tensorrt:${RELEASE}-py3
WORKDIR /workspace
COPY pyproject.toml README.md /opt/wastesort/
COPY src /opt/wastesort/src
RUN pip install --no-cache-dir "/opt/wastesort[variants]"
