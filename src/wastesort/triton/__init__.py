"""Triton side of the project: model configs, the local CPU tritonserver launcher and the
Python-backend model implementations (``model_repository/*/1/model.py`` import them).

Needs the ``serve`` extra (tritonclient, nvidia-pytriton); the core package does not.
"""
