"""Seed 001's compression for any trained classifier: a per-layer sensitivity scan, fine-grained
magnitude pruning (:mod:`.prune`) and k-means weight clustering with fine-tuned centroids
(:mod:`.cluster`); sizes measured on the exported ONNX files (:mod:`.size`)."""
