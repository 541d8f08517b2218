"""Robustness checks: the bad-input matrix, sustained load, and fault injection against a real Triton server."""
