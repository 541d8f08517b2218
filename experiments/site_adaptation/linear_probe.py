"""A linear probe on the simulated site, for scale: logistic regression on the pooled features
of the site's training photos (and their mirrors), scored on the same val photos as
``make adapt`` (mirror-averaged), with the shipped network's features and ImageNet's Lite0's.

    python experiments/site_adaptation/linear_probe.py --site /tmp/site/val
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.machine import describe, one_line
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.training.adapt import scan_site, split_site
from wastesort.training.lite import build_lite
from wastesort.training.rebuild import unadjusted_student


def pooled(net: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    """The pooled features of each image and of its mirror."""
    with torch.inference_mode():
        return [
            torch.cat(
                [net.forward_head(net.forward_features(torch.from_numpy(v[i : i + 32])), pre_logits=True) for i in range(0, len(v), 32)]
            ).numpy()
            for v in (x, np.ascontiguousarray(x[..., ::-1]))
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("linear_probe.json"))
    args = parser.parse_args(argv)
    model = ShippedModel(DEFAULT_NET)
    contract = PreprocessContract.from_onnx(str(model.onnx))
    splits = split_site(scan_site(args.site).samples)
    (x, y), (vx, vy) = (split_tensors(splits[s], contract, s) for s in ("train", "val"))
    nets = {"shipped": unadjusted_student(model.onnx, DEFAULT_NET), "imagenet": build_lite(DEFAULT_NET, 6, pretrained=True)}
    record: dict = {"machine": one_line(describe()), "site_train": len(y), "site_val": len(vy), "val_top1": {}}
    for name, net in nets.items():
        train, val = pooled(net.eval(), x), pooled(net.eval(), vx)
        for c in (0.1, 1.0, 10.0):
            probe = LogisticRegression(C=c, max_iter=3000).fit(np.concatenate(train), np.concatenate([y, y]))
            p = (probe.predict_proba(val[0]) + probe.predict_proba(val[1])) / 2
            record["val_top1"][f"{name}, C={c}"] = float((p.argmax(1) == vy).mean())
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
