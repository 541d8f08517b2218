"""Half-size copy of an ImageFolder of JPEGs (libjpeg-turbo DCT scaling to 1/2, re-encoded at
quality 90, 4:4:4), small enough to carry to the GPU machine:

    python experiments/gpu_seed_study/prep_half.py ../shared/data/trashnet .devdata/half
"""

import sys
from pathlib import Path

import simplejpeg

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
n = total = 0
for p in sorted(src.rglob("*.jpg")):
    out = dst / p.relative_to(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = p.read_bytes()
    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=h // 2, min_width=w // 2)
    enc = simplejpeg.encode_jpeg(img, quality=90, colorspace="RGB", colorsubsampling="444")
    out.write_bytes(enc)
    n, total = n + 1, total + len(enc)
print(f"{n} photos, {total / 1e6:.1f} MB")
