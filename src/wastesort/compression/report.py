"""``docs/compression.md`` in seed 001's form, plus the sensitivity-scan plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wastesort.compression.size import __doc__ as SIZE_DOC  # noqa: E402
from wastesort.compression.workflow import Result  # noqa: E402


def plot_scan(result: Result, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, accs in result.scan.items():
        ax.plot([0.0, *accs], [result.scan_baseline, *accs.values()], marker=".", alpha=0.6, label=name)
    ax.axhline(result.scan_baseline - result.settings.max_drop, color="k", ls="--", lw=1, label="allowed drop")
    ax.set_xlabel("share of the layer's weights pruned (alone)")
    ax.set_ylabel(f"val top-1 ({result.scan_photos} photos)")
    ax.set_title(f"{result.net}: per-layer pruning sensitivity")
    if len(result.scan) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def markdown(result: Result, machine: str, plot_name: str | None, command: str) -> str:
    s = result.settings
    dense = result.stages[0]
    lines = [
        f"# Pruning and weight clustering of `{result.net}`",
        "",
        f"Seed 001's recipe on `{result.run}` (the model's own split), made by `{command}` on {machine}.",
        "",
        "| model | val top-1 | test top-1 | vs dense (pts) | ONNX MB | compressed MB | size reduction "
        "| ORT img/s | speed vs dense | gate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for st in result.stages:
        lines.append(
            f"| {st.name} | {st.val_top1:.4f} | {st.test_top1:.4f} | {(st.test_top1 - dense.test_top1) * 100:+.2f} | {_mb(st.bytes)} | "
            f"{_mb(st.compressed_bytes)} | {dense.bytes / st.compressed_bytes:.1f}x | {st.img_s:.1f} | {st.img_s / dense.img_s:.2f}x | "
            f"{'installed: ' if st.installed else ''}{st.reason} |"
        )
    lines += [
        "",
        f"- Test top-1 on the {result.test_images} test photos through the serving preprocessing and ONNX Runtime (the accuracy "
        "gate of `make build`); val top-1 in PyTorch on the whole validation split.",
        "- Size reduction: dense ONNX bytes / the variant's compressed bytes. " + " ".join(SIZE_DOC.split("\n\n")[1].split()),
        f"- Timing: ONNX Runtime on this CPU, batch {result.timing_batch}, median of 10, the three models interleaved in one run.",
        "",
    ]
    refused = [st.name for st in result.stages[1:] if not st.passed]
    if refused:
        lines += [
            "## Outcome",
            "",
            f"Refused by the gate: {', '.join(refused)}. The per-layer ratios are chosen one layer at a time on "
            f"{result.scan_photos} validation photos (one photo is {100 / max(result.scan_photos, 1):.1f} points), so a scan "
            "too coarse to see a layer's cost can prune it hard; the losses add up, and the fine-tuning did not recover them. "
            "To trade less accuracy: a stricter `--max-drop`, more `--scan-images`, more `--finetune-epochs` (a GPU makes "
            "that cheap). ONNX Runtime's dense kernels gain nothing from the zeros or the shared values either way.",
            "",
        ]
    lines += [
        "## Settings",
        "",
        f"- sensitivity scan: every conv/linear layer with at least {s.min_weights:,} weights pruned alone at "
        f"{', '.join(f'{r:.0%}' for r in s.ratios)}, val top-1 on {result.scan_photos} val photos (dense: {result.scan_baseline:.4f})",
        f"- per-layer ratio: the largest that costs at most {s.max_drop * 100:.1f} points alone (0: stays dense); "
        "L1-magnitude, per weight (`torch.nn.utils.prune.l1_unstructured`)",
        f"- fine-tune after pruning and after clustering: {s.finetune_epochs} epoch(s) each at lr {s.lr:g}, the run's own recipe "
        "and split, masks kept",
        f"- clustering: scikit-learn k-means per conv/linear layer, {s.clusters} values per layer (pruned zeros are one of them), "
        "centroids fine-tuned through a parametrisation (each gets the summed gradient of its weights)",
        "",
        "## Layers",
        "",
        "| layer | weights | ratio | sparsity | distinct values |",
        "|---|---|---|---|---|",
        *[f"| {r['layer']} | {r['weights']:,} | {r['ratio']:.0%} | {r['sparsity']:.1%} | {r['distinct_values']} |" for r in result.layers],
        "",
    ]
    if plot_name:
        lines += ["## Sensitivity scan", "", f"![sensitivity]({plot_name})", ""]
    return "\n".join(lines)
