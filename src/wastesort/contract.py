"""The preprocessing contract: how an encoded photo becomes the classifier's input tensor.

It is defined once, here, and travels with every exported model as ONNX ``metadata_props``
(keys ``labels`` and ``preprocessing``, both JSON), so that any consumer (the Triton
preprocessing model, INT8 calibration, the client, a third party) can feed the model
without this project's code.

Contract of the tensor it describes: ``float32``, layout ``NCHW``, channels ``RGB``,
values ``(pixel / 255 - mean) / std`` per channel, spatial size ``height x width``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from wastesort.labels import LABELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Interpolations. ``bilinear`` and ``bicubic``: Pillow's (antialiased when shrinking).
#: ``area``: OpenCV's ``INTER_AREA`` (pixel-area averaging when shrinking, bilinear when
#: enlarging), about ten times faster than Pillow's resize on this project's CPUs.
INTERPOLATIONS = ("bilinear", "bicubic", "area")
#: ``jpeg_draft_floor`` of contracts written before the field existed: JPEGs decoded at full
#: size unless a power-of-two DCT reduction stays at least as large as the resize target.
LEGACY_JPEG_DRAFT_FLOOR = 1.0

#: Resize policies. ``squash``: the whole image is resized to ``height x width``, aspect ratio
#: not kept (nothing is cropped away). ``center_crop``: the shorter side is resized to
#: ``size / crop_fraction``, then the centre ``height x width`` is cropped.
RESIZE_POLICIES = ("squash", "center_crop")

META_LABELS = "labels"
META_PREPROCESSING = "preprocessing"


@dataclass(frozen=True)
class PreprocessContract:
    """Input size, resize policy, normalisation, channel order and dtype of a model's input."""

    height: int = 224
    width: int = 224
    resize: str = "squash"
    crop_fraction: float = 0.875
    interpolation: str = "area"
    #: JPEGs are decoded with libjpeg-turbo's DCT-domain downscaling (1/2, 1/4 or 1/8: the
    #: SIMD-accelerated factors) to the smallest size whose sides stay at least this fraction
    #: of the resize target's; the resize then makes up the rest. 0.75 lets a 384x512
    #: TrashNet photo decode at 192x256 for a 224x224 input (decoding is about half the
    #: cost of preprocessing).
    jpeg_draft_floor: float = 0.75
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    labels: tuple[str, ...] = field(default=LABELS)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, not {self.resize!r}")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], not {self.crop_fraction}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        if not 0.0 < self.jpeg_draft_floor <= 1.0:
            raise ValueError(f"jpeg_draft_floor must be in (0, 1], not {self.jpeg_draft_floor}")
        if self.height < 8 or self.width < 8:
            raise ValueError(f"input size {self.height}x{self.width} is too small")
        if (self.channel_order, self.layout, self.dtype) != ("RGB", "NCHW", "float32"):
            raise ValueError("only RGB, NCHW, float32 inputs are supported")

    @property
    def resize_size(self) -> tuple[int, int]:
        """(width, height) the image is resized to before any crop (``center_crop`` only
        resizes the shorter side; this is the size of a square input's resize)."""
        if self.resize == "squash":
            return self.width, self.height
        return (round(self.width / self.crop_fraction), round(self.height / self.crop_fraction))

    def with_pillow_decoder(self) -> PreprocessContract:
        """The same geometry and normalisation through Pillow's decoder and bilinear resize
        (what models trained before ``area`` decode with): the benchmarks' comparison row."""
        return replace(self, interpolation="bilinear", jpeg_draft_floor=LEGACY_JPEG_DRAFT_FLOOR)

    def to_metadata(self) -> dict[str, str]:
        """ONNX ``metadata_props`` entries (str -> str) that carry this contract."""
        body = asdict(self)
        labels = body.pop("labels")
        return {META_LABELS: json.dumps(list(labels)), META_PREPROCESSING: json.dumps(body)}

    @classmethod
    def from_metadata(cls, props: dict[str, str]) -> PreprocessContract:
        """Inverse of :meth:`to_metadata`. Raises ``KeyError`` naming a missing key."""
        for key in (META_LABELS, META_PREPROCESSING):
            if key not in props:
                raise KeyError(f"model metadata has no {key!r} entry; was it exported by wastesort?")
        body = json.loads(props[META_PREPROCESSING])
        body.setdefault("jpeg_draft_floor", LEGACY_JPEG_DRAFT_FLOOR)
        body["mean"] = tuple(body["mean"])
        body["std"] = tuple(body["std"])
        return cls(labels=tuple(json.loads(props[META_LABELS])), **body)

    @classmethod
    def from_onnx(cls, path: str) -> PreprocessContract:
        """Read the contract from an ONNX file's metadata (uses onnxruntime, no torch)."""
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return cls.from_metadata(session.get_modelmeta().custom_metadata_map)
