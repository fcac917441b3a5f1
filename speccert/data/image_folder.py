"""A folder of images by class: `root/<class name>/<image>`; classes are the sorted sub-folder names.

Images: PNG (Pillow if installed, else speccert.data.png), binary PGM/PPM, or .npy arrays. Colour images
become [3, H, W] (channels first), grey ones [1, H, W]; every image must have the same shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from speccert.data.png import check_png, read_png
from speccert.errors import InputError
from speccert.limits import check_bytes

IMAGE_SUFFIXES = (".png", ".pgm", ".ppm", ".npy", ".jpg", ".jpeg", ".bmp")


def _read_pnm(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:
        while pos < len(raw) and raw[pos : pos + 1].isspace():
            pos += 1
        if raw[pos : pos + 1] == b"#":
            while pos < len(raw) and raw[pos : pos + 1] != b"\n":
                pos += 1
            continue
        start = pos
        while pos < len(raw) and not raw[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise InputError(f"{path}: truncated PGM/PPM header")
        tokens.append(raw[start:pos])
    magic = tokens[0]
    if magic not in (b"P5", b"P6") or any(not t.isdigit() or len(t) > 9 for t in tokens[1:]):
        raise InputError(
            f"{path}: not a binary PGM (P5) / PPM (P6) header: width, height and maxval must be "
            f"positive integers, got {b' '.join(tokens[1:])!r}"
        )
    w, h, maxval = int(tokens[1]), int(tokens[2]), int(tokens[3])
    if maxval != 255 or w == 0 or h == 0:
        raise InputError(f"{path}: only 8-bit (maxval 255) PGM/PPM images of positive size are supported")
    ch = 1 if magic == b"P5" else 3
    data = np.frombuffer(raw, dtype=np.uint8, offset=min(pos + 1, len(raw)))
    if data.size != w * h * ch:
        raise InputError(f"{path}: PGM/PPM data has the wrong size")
    img = data.reshape(h, w, ch)
    return img[..., 0] if ch == 1 else img


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # object arrays need pickle: refused
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise InputError(f"{path}: an image .npy must hold a numeric array")
    return arr


def _read_pillow(path: Path) -> np.ndarray:
    """Decode with Pillow: its errors (OSError, SyntaxError, zlib errors, DecompressionBombError...) and
    its decompression-bomb warning become one InputError line; the pixel count is checked first."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                check_bytes(f"{path}: a {w}x{h} image", w * h * max(len(im.getbands()), 3))
                mode = (
                    im.mode
                    if im.mode in ("L", "RGB")
                    else ("RGB" if "A" in im.mode or im.mode in ("P", "CMYK") else "L")
                )
                return np.asarray(im.convert(mode))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to decode an untrusted file is bad input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read image {path}: {first}") from None


def read_image(path: Path) -> np.ndarray:
    """One image as an array: [H, W] or [H, W, C] for picture files, as stored for .npy."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix in (".pgm", ".ppm"):
        return _read_pnm(path)
    try:
        import PIL  # noqa: F401
    except ImportError:
        if suffix == ".png":
            return read_png(path)
        raise InputError(
            f"{path}: reading {suffix} images needs Pillow (pip install pillow); "
            "PNG, PGM/PPM and .npy work without it"
        ) from None
    if suffix == ".png":
        check_png(path)
    return _read_pillow(path)


def read_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(x [N, C, H, W] or as stored for .npy, y [N], class names)."""
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise InputError(
            f"{root}: a data folder needs one sub-folder of images per class (or IDX files, or x.npy/y.npy)"
        )
    xs: list[np.ndarray] = []
    ys: list[int] = []
    total = 0
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                img = read_image(f)
                if f.suffix.lower() != ".npy":
                    img = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
                if xs and img.shape != xs[0].shape:
                    raise InputError(
                        f"{f}: shape {list(img.shape)} differs from the first image's {list(xs[0].shape)}"
                    )
                xs.append(img)
                ys.append(label)
                total += img.nbytes
                check_bytes(f"the images of {root} (as float32)", 4 * total)
    if not xs:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return np.stack(xs), np.asarray(ys, dtype=np.int64), classes
