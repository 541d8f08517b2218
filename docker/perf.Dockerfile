# NVIDIA's client SDK image of the same release as the server (perf_analyzer on PATH), plus this
# project's perf harness (perf/run.py) and what it needs to read the dataset and draw the plots.
ARG RELEASE=24.10
FROM nvcr.io/nvidia/tritonserver:${RELEASE}-py3-sdk
WORKDIR /workspace
COPY pyproject.toml README.md /opt/wastesort/
COPY src /opt/wastesort/src
RUN pip install --no-cache-dir "/opt/wastesort[perf]"
