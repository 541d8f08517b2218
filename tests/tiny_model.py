"""A tiny classifier with one dense head, for tests that rewrite an export's head (logit
adjustment, calibration) without the cost of a real network."""

from __future__ import annotations

import torch
from torch import nn

from wastesort.contract import PreprocessContract
from wastesort.labels import LABELS

#: The 32 px contract its exports carry.
CONTRACT = PreprocessContract(height=32, width=32)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.classifier = nn.Linear(8, len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.conv(x)).mean(dim=(2, 3)))
