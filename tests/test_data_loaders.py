"""Data readers (speccert.data): .npz, .npy pairs, IDX (gz or not), image folders, fitting to a model."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from speccert.data import fit_to_model, load_data
from speccert.data.png import read_png
from speccert.errors import InputError, UsageError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_png(path: Path, img: np.ndarray, filters: tuple[int, ...] = (0, 1, 2, 3, 4)) -> None:
    """A minimal PNG encoder exercising every filter type (row i uses filters[i % len])."""
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else img.shape[2]
    color = {1: 0, 2: 4, 3: 2, 4: 6}[ch]
    rows = img.reshape(h, w * ch).astype(np.int32)
    raw = b""
    prev = np.zeros(w * ch, dtype=np.int32)
    for i in range(h):
        f, cur = filters[i % len(filters)], rows[i]
        a = np.concatenate([np.zeros(ch, dtype=np.int32), cur[:-ch]])
        c = np.concatenate([np.zeros(ch, dtype=np.int32), prev[:-ch]])
        if f == 0:
            out = cur
        elif f == 1:
            out = cur - a
        elif f == 2:
            out = cur - prev
        elif f == 3:
            out = cur - (a + prev) // 2
        else:
            p = a + prev - c
            pa, pb, pc = abs(p - a), abs(p - prev), abs(p - c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, c))
            out = cur - pred
        raw += bytes([f]) + (out & 0xFF).astype(np.uint8).tobytes()
        prev = cur

    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))

    head = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_npz_and_npy_pairs(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (7, 1, 4, 4), dtype=np.uint8)
    y = np.arange(7) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data(tmp_path / "d.npz")
    assert d.x.dtype == np.float32 and d.x.max() <= 1.0
    np.testing.assert_allclose(d.x, x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y, y)
    np.save(tmp_path / "test_x.npy", x.astype(np.float32))
    np.save(tmp_path / "test_y.npy", y)
    assert len(load_data(tmp_path / "test_x.npy", limit=3)) == 3
    folder = tmp_path / "pair"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y.astype(np.float64))
    np.testing.assert_array_equal(load_data(folder).y, y)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_by_split_and_single_file(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    sfx = ".gz" if gz else ""
    for prefix, n in (("t10k", 5), ("train", 9)):
        write_idx(
            tmp_path / f"{prefix}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n, 6, 6), dtype=np.uint8), gz
        )
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{sfx}", (np.arange(n) % 10).astype(np.uint8), gz)
    test, train = load_data(tmp_path), load_data(tmp_path, split="train")
    assert test.x.shape == (5, 6, 6) and train.x.shape == (9, 6, 6) and test.split == "test"
    single = load_data(tmp_path / f"train-images-idx3-ubyte{sfx}")
    np.testing.assert_array_equal(single.x, train.x)
    with pytest.raises(UsageError, match="split"):
        load_data(tmp_path, split="valid")


def test_idx_corrupt_and_missing_labels(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 3, 3) + b"x"
    )
    with pytest.raises(InputError, match="labels"):
        load_data(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, dtype=np.uint8), False)
    with pytest.raises(InputError, match="declares"):
        load_data(tmp_path)


def test_png_decoder_all_filters_grey_rgb_alpha(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for shape in ((5, 7), (4, 6, 3), (3, 5, 4), (6, 3, 2)):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        write_png(tmp_path / "a.png", img)
        want = img if img.ndim == 2 else (img[..., 0] if img.shape[2] == 2 else img[..., :3])
        np.testing.assert_array_equal(read_png(tmp_path / "a.png"), want)


def test_image_folder_by_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    imgs = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            img = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
            write_png(tmp_path / cls / f"{i}.png", img)
            imgs[(cls, i)] = img
    d = load_data(tmp_path)
    assert d.classes == ("cat", "dog") and d.x.shape == (6, 3, 4, 5)
    np.testing.assert_array_equal(d.y, [0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(d.x[4], np.moveaxis(imgs[("dog", 1)], -1, 0) / 255.0, rtol=1e-6)


def test_fit_to_model_reshapes_only_safely() -> None:
    d = load_data_arrays(np.zeros((3, 784), dtype=np.float32), np.array([0, 1, 2]))
    assert fit_to_model(d, (1, 28, 28), 10).x.shape == (3, 1, 28, 28)
    d2 = load_data_arrays(np.zeros((3, 28, 28, 1), dtype=np.float32), np.array([0, 1, 2]))
    assert fit_to_model(d2, (1, 28, 28), 10).x.shape == (3, 1, 28, 28)
    d3 = load_data_arrays(np.zeros((3, 32, 32, 3), dtype=np.float32), np.array([0, 1, 2]))
    with pytest.raises(InputError, match="transpose"):
        fit_to_model(d3, (3, 32, 32), 10)
    with pytest.raises(InputError, match="out of range"):
        fit_to_model(d, (784,), 2)


def load_data_arrays(x: np.ndarray, y: np.ndarray):  # noqa: ANN201
    from speccert.data import make_dataset

    return make_dataset(x, y, "<test>")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_data(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_data(tmp_path / "bad.npz")
    np.savez(tmp_path / "keys.npz", a=np.zeros(3))
    with pytest.raises(InputError, match="'x' and 'y'"):
        load_data(tmp_path / "keys.npz")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4)), y=np.zeros(0, dtype=int))
    with pytest.raises(InputError, match="empty"):
        load_data(tmp_path / "empty.npz")
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((3, 4)), y=np.zeros(2, dtype=int))
    with pytest.raises(InputError, match="3 inputs but 2 labels"):
        load_data(tmp_path / "mismatch.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="unknown data format"):
        load_data(tmp_path / "data.csv")
    with pytest.raises(UsageError, match="limit"):
        load_data(tmp_path / "keys.npz", limit=0)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_folder() -> None:
    d = load_data(FASHION, split="test", limit=100)
    assert d.x.shape == (100, 28, 28) and d.y.max() <= 9 and 0 < d.x.max() <= 1.0
