"""A small PNG decoder (8-bit, non-interlaced; grey, grey+alpha, RGB, RGBA) so that a folder of PNG
images can be read without Pillow. Pillow, when installed, is used instead (more formats).

Hostile files are refused before they cost memory or time: every chunk's length and CRC are checked,
the header's size is checked against the memory budget (speccert.limits) and, because the Average and
Paeth filters run row by row in Python here, against MAX_PURE_PYTHON_BYTES; the image data is
inflated incrementally and never past the size the header declares (a zlib bomb stops there).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from speccert.errors import InputError
from speccert.limits import check_bytes, human

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
# Decoded bytes this pure-Python decoder accepts (~1 s of Paeth filtering); Pillow has no such cap.
MAX_PURE_PYTHON_BYTES = 4 << 20


def _sub(line: np.ndarray, bpp: int) -> np.ndarray:
    """Filter 1 (Sub): x[i] = line[i] + x[i - bpp], a running sum mod 256 along each byte lane."""
    lanes = line.reshape(-1, bpp).astype(np.uint64)
    return (np.cumsum(lanes, axis=0) & 0xFF).astype(np.uint8).reshape(-1)


def _sequential(ftype: int, line: bytes, prev: bytes, bpp: int) -> bytearray:
    """Filters 3 (Average) and 4 (Paeth): each byte depends on the one bpp before it."""
    cur = bytearray(line)
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        b = prev[i]
        if ftype == 3:
            pred = (a + b) >> 1
        else:
            c = prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        cur[i] = (cur[i] + pred) & 0xFF
    return cur


def _unfilter(data: bytes, height: int, stride: int, bpp: int, path: Path) -> np.ndarray:
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for row in range(height):
        pos = row * (stride + 1)
        ftype = data[pos]
        line = np.frombuffer(data, dtype=np.uint8, count=stride, offset=pos + 1)
        if ftype == 0:
            cur = line
        elif ftype == 1:
            cur = _sub(line, bpp)
        elif ftype == 2:
            cur = line + prev  # uint8 arithmetic wraps mod 256
        elif ftype in (3, 4):
            cur = np.frombuffer(_sequential(ftype, line.tobytes(), prev.tobytes(), bpp), dtype=np.uint8)
        else:
            raise InputError(f"{path}: bad PNG filter type {ftype}")
        out[row] = cur
        prev = out[row]
    return out


def _chunks(raw: bytes, path: Path) -> tuple[tuple[int, ...], list[bytes]]:
    """(IHDR fields, IDAT bodies), every chunk's length and CRC checked."""
    pos, idat, header = 8, [], None
    while pos + 8 <= len(raw):
        length, ctype = struct.unpack(">I4s", raw[pos : pos + 8])
        if pos + 12 + length > len(raw):
            raise InputError(f"{path}: truncated PNG ({ctype!r} chunk runs past the end of the file)")
        body = raw[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(ctype + body) != crc:
            raise InputError(f"{path}: corrupt PNG ({ctype!r} chunk fails its CRC check)")
        pos += 12 + length
        if ctype == b"IHDR":
            if length != 13:
                raise InputError(f"{path}: corrupt PNG header ({length} bytes, expected 13)")
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
    if header is None:
        raise InputError(f"{path}: PNG without a header")
    return header, idat


def _inflate(idat: list[bytes], size: int, path: Path) -> bytes:
    """Decompress at most `size` bytes; more (a zlib bomb, or a lying header) is an error."""
    d = zlib.decompressobj()
    out = bytearray()
    try:
        for body in idat:
            out += d.decompress(body, size + 1 - len(out))
            if len(out) > size or d.unconsumed_tail:
                raise InputError(f"{path}: PNG data inflates past the {size} bytes its header declares")
    except zlib.error as exc:
        raise InputError(f"{path}: corrupt PNG data ({exc})") from None
    if len(out) != size:
        raise InputError(f"{path}: PNG data has the wrong size ({len(out)} bytes, expected {size})")
    return bytes(out)


def check_png(path: Path) -> tuple[int, int]:
    """(width, height) after checking the file's structure (every chunk's length and CRC, which Pillow
    does not check for image data) and the declared size against the memory budget."""
    raw = path.read_bytes()
    if not raw.startswith(_SIGNATURE):
        raise InputError(f"{path}: not a PNG file")
    (width, height, *_), _ = _chunks(raw, path)
    check_bytes(f"{path}: a {width}x{height} PNG", 4 * width * height)
    return width, height


def read_png(path: Path) -> np.ndarray:
    """[H, W] (grey) or [H, W, 3] (colour) uint8; alpha is dropped."""
    raw = path.read_bytes()
    if not raw.startswith(_SIGNATURE):
        raise InputError(f"{path}: not a PNG file")
    (width, height, depth, color, _, _, interlace), idat = _chunks(raw, path)
    if depth != 8 or color not in _CHANNELS or interlace != 0:
        raise InputError(
            f"{path}: only 8-bit non-interlaced grey/RGB(A) PNGs can be read without Pillow "
            f"(bit depth {depth}, colour type {color}, interlace {interlace})"
        )
    if width == 0 or height == 0:
        raise InputError(f"{path}: PNG of size {width}x{height}")
    ch = _CHANNELS[color]
    size = height * (width * ch + 1)
    check_bytes(f"{path}: a {width}x{height} PNG", size)
    if size > MAX_PURE_PYTHON_BYTES:
        raise InputError(
            f"{path}: a {width}x{height} PNG ({human(size)}) is too large for the built-in decoder "
            f"(at most {human(MAX_PURE_PYTHON_BYTES)}); install Pillow to read it"
        )
    data = _inflate(idat, size, path)
    img = _unfilter(data, height, width * ch, ch, path).reshape(height, width, ch)
    if ch in (2, 4):
        img = img[..., :-1]
    return img[..., 0] if img.shape[-1] == 1 else img
