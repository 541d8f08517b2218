"""Precision variants of an exported classifier (``build/`` entry points use these):
ONNX Runtime FP32 (offline-optimised), INT8 (static QDQ) and FP16, TensorRT plans through
Polygraphy, the calibration data they share, and the accuracy gate that decides what is served."""
