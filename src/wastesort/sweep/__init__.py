"""Hyperparameter sweeps with Optuna: search spaces (:mod:`.space`), the objective that trains
one trial through the ordinary training CLI (:mod:`.objective`), the study (:mod:`.study`) and
its committed report (:mod:`.report`)."""
