"""The benchmark harness behind ``perf/run.py``: one timing method (:mod:`.timing`), the
in-process rows (:mod:`.inprocess`, :mod:`.torch_model`), ONNX Runtime profiles
(:mod:`.profile`), perf_analyzer (:mod:`.analyzer`), the machine description (:mod:`.machine`)
and the outputs (:mod:`.report`)."""
