"""The ordered class labels. Index ``i`` of every logit/probability vector is ``LABELS[i]``."""

LABELS: tuple[str, ...] = ("cardboard", "glass", "metal", "paper", "plastic", "trash")
