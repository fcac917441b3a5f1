"""A small PNG decoder (8-bit, non-interlaced; grey, grey+alpha, RGB, RGBA) so that a folder of PNG
images can be read without Pillow. Pillow, when installed, is used instead (more formats)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from speccert.errors import InputError

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _unfilter(data: bytes, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    pos = 0
    for row in range(height):
        ftype = data[pos]
        line = np.frombuffer(data, dtype=np.uint8, count=stride, offset=pos + 1).astype(np.int32)
        pos += stride + 1
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:
            cur = np.zeros(stride, dtype=np.int32)
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if ftype == 1:
                    pred = a
                elif ftype == 3:
                    pred = (a + b) // 2
                elif ftype == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                else:
                    raise InputError(f"{path}: bad PNG filter type {ftype}")
                cur[i] = (line[i] + pred) & 0xFF
        out[row] = cur
        prev = cur
    return out


def read_png(path: Path) -> np.ndarray:
    """[H, W] (grey) or [H, W, 3] (colour) uint8; alpha is dropped."""
    raw = path.read_bytes()
    if not raw.startswith(_SIGNATURE):
        raise InputError(f"{path}: not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(raw):
        length, ctype = struct.unpack(">I4s", raw[pos : pos + 8])
        body = raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if header is None:
        raise InputError(f"{path}: PNG without a header")
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in _CHANNELS or interlace != 0:
        raise InputError(
            f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs can be read without Pillow "
            f"(bit depth {depth}, colour type {color}, interlace {interlace})"
        )
    ch = _CHANNELS[color]
    try:
        data = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt PNG data ({exc})") from None
    if len(data) != height * (width * ch + 1):
        raise InputError(f"{path}: PNG data has the wrong size")
    img = _unfilter(data, height, width * ch, ch, path).reshape(height, width, ch)
    if ch in (2, 4):
        img = img[..., :-1]
    return img[..., 0] if img.shape[-1] == 1 else img
