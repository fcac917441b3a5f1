"""Hostile input files, generated on the fly (tiny on disk), and a runner that measures what the CLI does
with each: exit code, seconds, peak memory, stderr, files it left behind.

Used by tests/test_hostile_inputs.py and, as a script, to print the table of issue 17:

    PYTHONPATH=$PWD python tests/hostile_inputs.py [--repo PATH]     # PATH: the checkout to run

Each case runs `python -m speccert ...` in a subprocess under RLIMIT_AS (MEMORY_LIMIT) with the memory
budget SPECCERT_MAX_MEMORY=BUDGET, so bombs stay small: a file only has to declare or inflate to more
than BUDGET to be hostile here, the same code path a 10 GB file takes with the default budget.
"""

from __future__ import annotations

import gzip
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
MLP = REPO / "models" / "mlp.onnx"
MLP_PT2 = REPO / "models" / "mlp.pt2"
MEMORY_LIMIT = 2 << 30  # RLIMIT_AS of every run: torch needs ~1.5 GiB of address space to start
BUDGET = "64M"
BOMB = 256 << 20  # what a bomb inflates to: 4x the budget, ~250 KB on disk


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], list[str]]  # writes files under the folder, returns speccert's argv
    expect: int = 4
    no_pillow: bool = False


@dataclass
class Outcome:
    code: int
    seconds: float
    peak_mb: float
    stderr: str
    stray: list[str] = field(default_factory=list)


# ---- builders ------------------------------------------------------------------------------------
def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _model(nodes: list, inp: list[int], out: list[int], inits: list, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, inp)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def external_weight(d: Path) -> list[str]:
    """Gemm whose 50000 x 50000 weight (10 GB) lives in a sparse file beside the model."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[50000, 50000])
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    with open(d / "w.bin", "wb") as f:
        f.truncate(50000 * 50000 * 4)
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    return ["inspect", str(_save(_model([node], [1, 50000], [1, 50000], [w]), d / "m.onnx"))]


def huge_input(d: Path) -> list[str]:
    node = helper.make_node("Relu", ["x"], ["y"])
    shape = [1, 1, 100000, 100000]
    return ["inspect", str(_save(_model([node], shape, shape, []), d / "m.onnx"))]


def init_without_data(d: Path) -> list[str]:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10, 784])
    node = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
    return ["inspect", str(_save(_model([node], [1, 784], [1, 10], [w]), d / "m.onnx"))]


def _bn(d: Path, var: list[float], eps: float) -> list[str]:
    c = np.ones(3, np.float32)
    inits = [
        numpy_helper.from_array(c, "s"),
        numpy_helper.from_array(0 * c, "b"),
        numpy_helper.from_array(0 * c, "m"),
        numpy_helper.from_array(np.array(var, np.float32), "v"),
    ]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=eps)
    return ["inspect", str(_save(_model([node], [1, 3, 4, 4], [1, 3, 4, 4], inits), d / "m.onnx"))]


def _png(width: int, height: int, idat: bytes, color: int = 0, bad_crc: bool = False) -> bytes:
    def chunk(kind: bytes, body: bytes, crc_xor: int = 0) -> bytes:
        crc = zlib.crc32(kind + body) ^ crc_xor
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", idat, 1 if bad_crc else 0)
        + chunk(b"IEND", b"")
    )


def _image_folder(d: Path, name: str, payload: bytes) -> list[str]:
    for cls in ("a", "b"):
        (d / "data" / cls).mkdir(parents=True, exist_ok=True)
    (d / "data" / "a" / name).write_bytes(payload)
    ok = zlib.compress(b"".join(b"\x00" + bytes(28) for _ in range(28)))
    (d / "data" / "b" / "ok.png").write_bytes(_png(28, 28, ok))
    return ["certify", str(MLP), "--data", str(d / "data"), "--eps", "0.1"]


def png_bomb(d: Path) -> list[str]:
    """28x28 header; its IDAT inflates to BOMB bytes of zeros."""
    c = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    idat = b"".join(c.compress(zeros) for _ in range(BOMB >> 20)) + c.flush()
    return _image_folder(d, "x.png", _png(28, 28, idat))


def png_paeth(d: Path) -> list[str]:
    """6000 x 6000 grey, every row Paeth-filtered zeros: 36 MB of work from a ~40 KB file."""
    rows = zlib.compress((b"\x04" + bytes(6000)) * 6000, 9)
    return _image_folder(d, "x.png", _png(6000, 6000, rows))


def idx_bomb(d: Path, declared: int) -> list[str]:
    """t10k images .gz whose header declares `declared` images of 28x28 and which inflates to BOMB."""
    (d / "idx").mkdir()
    head = struct.pack(">BBBBIII", 0, 0, 8, 3, declared, 28, 28)
    with gzip.open(d / "idx" / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(head)
        zeros = bytes(1 << 20)
        for _ in range(BOMB >> 20):
            f.write(zeros)
    labels = struct.pack(">BBBBI", 0, 0, 8, 1, declared) + bytes(min(declared, 10))
    (d / "idx" / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return ["certify", str(MLP), "--data", str(d / "idx"), "--eps", "0.1"]


def _deflated_pt2(d: Path, member_bytes: int) -> list[str]:
    out = d / "m.pt2"
    with zipfile.ZipFile(MLP_PT2) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            zi = zipfile.ZipInfo(info.filename)
            zi.compress_type = zipfile.ZIP_DEFLATED
            if info.filename.endswith("/weights/weight_0"):
                with dst.open(zi, "w", force_zip64=True) as f:
                    zeros = bytes(1 << 20)
                    for _ in range(member_bytes >> 20):
                        f.write(zeros)
            else:
                dst.writestr(zi, src.read(info))
    return ["inspect", str(out)]


def _npy_object(d: Path) -> list[str]:
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return _image_folder(d, "x.npy", buf.getvalue())


def _single(name: str, payload: bytes) -> Callable[[Path], list[str]]:
    return lambda d: _image_folder(d, name, payload)


_OK_ROWS = zlib.compress(b"".join(b"\x00" + bytes(28) for _ in range(28)))
CASES = [
    Case("onnx: 50000x50000 external weight (10 GB sparse file)", external_weight),
    Case("onnx: declared input [1,1,100000,100000]", huge_input),
    Case("onnx: initialiser with dims but no data", init_without_data),
    Case("onnx: BatchNorm with negative variance", lambda d: _bn(d, [-1.0, 1.0, 1.0], 1e-5)),
    Case("onnx: BatchNorm with var 0 and eps 0", lambda d: _bn(d, [0.0, 1.0, 1.0], 0.0)),
    Case(".pt2: zip bomb (weight member inflates to 256 MiB)", lambda d: _deflated_pt2(d, BOMB)),
    Case(".pt2: 16 MiB weight member where 25 KB is declared", lambda d: _deflated_pt2(d, 16 << 20)),
    Case(
        "png: garbage bytes (Pillow)",
        _single("x.png", b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(200)),
    ),
    Case(
        "png: garbage bytes (no Pillow)", _single("x.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200))), 4, True
    ),
    Case("png: bad CRC (Pillow)", _single("x.png", _png(28, 28, _OK_ROWS, bad_crc=True))),
    Case("png: bad CRC (no Pillow)", _single("x.png", _png(28, 28, _OK_ROWS, bad_crc=True)), 4, True),
    Case("png: 100000x100000 header (Pillow)", _single("x.png", _png(100000, 100000, _OK_ROWS))),
    Case("png: 100000x100000 header (no Pillow)", _single("x.png", _png(100000, 100000, _OK_ROWS)), 4, True),
    Case("png: truncated header (Pillow)", _single("x.png", _png(28, 28, _OK_ROWS)[:20])),
    Case("png: truncated header (no Pillow)", _single("x.png", _png(28, 28, _OK_ROWS)[:20]), 4, True),
    Case("png: zlib bomb in a 28x28 image (no Pillow)", png_bomb, 4, True),
    Case("png: 6000x6000 Paeth rows (no Pillow)", png_paeth, 4, True),
    Case("pgm: negative dimensions", _single("x.pgm", b"P5\n-28 28\n255\n" + bytes(784))),
    Case("pgm: non-numeric dimensions", _single("x.pgm", b"P5\nab 28\n255\n" + bytes(784))),
    Case("npy: object array in an image folder", _npy_object),
    Case("idx: gzip bomb (header declares 10 images)", lambda d: idx_bomb(d, 10)),
    Case("idx: gzip bomb (header declares 342k images)", lambda d: idx_bomb(d, BOMB // 784)),
]


# ---- runner --------------------------------------------------------------------------------------
# One worker process (under RLIMIT_AS) imports speccert once, then forks a child per case: the child
# runs the CLI's main() with stderr to a file, in an empty working folder with its own TMPDIR and HOME;
# the worker reaps it with wait4 (exit code, peak RSS). Starting torch once keeps the suite fast.


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _child(argv: list[str], folder: Path, no_pillow: bool) -> None:
    import tempfile as tf

    os.chdir(folder / "cwd")
    os.environ.update(TMPDIR=str(folder / "tmp"), HOME=str(folder / "home"))
    tf.tempdir = None
    if no_pillow:
        sys.modules["PIL"] = None  # type: ignore[assignment]  # as if Pillow were not installed
    fd = os.open(folder / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    from speccert.cli.app import main as cli_main

    os._exit(cli_main(argv))


def _worker(spec_path: Path) -> None:
    import json

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.environ.update(SPECCERT_MAX_MEMORY=BUDGET, OMP_NUM_THREADS="1", COLUMNS="200")
    # imported once, before the forks (PIL too: a child that blocks it still cannot import it)
    import onnxruntime  # noqa: F401
    import PIL.Image  # noqa: F401
    import torch.export  # noqa: F401

    import speccert.cli.app  # noqa: F401
    import speccert.data  # noqa: F401
    import speccert.importers  # noqa: F401

    spec = json.loads(spec_path.read_text())
    results = []
    for job in spec["jobs"]:
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            try:
                _child(job["argv"], Path(job["folder"]), job["no_pillow"])
            finally:
                os._exit(99)
        deadline = start + spec["timeout"]
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() > deadline:
                os.kill(pid, 9)
                done, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.01)
        code = os.waitstatus_to_exitcode(status)
        results.append([code, time.perf_counter() - start, usage.ru_maxrss / 1024])
    spec_path.write_text(json.dumps({**spec, "results": results}))


def run_cases(cases: list[Case], root: Path, repo: Path = REPO, timeout: float = 120.0) -> list[Outcome]:
    """Build every case's files under `root`, run the CLI on each, and measure."""
    import json

    jobs, befores = [], []
    for i, case in enumerate(cases):
        folder = root / f"case{i}"
        (folder / "in").mkdir(parents=True)
        argv = case.build(folder / "in")
        for sub in ("cwd", "tmp", "home"):
            (folder / sub).mkdir()
        befores.append(_files(folder / "in"))
        jobs.append({"argv": argv, "folder": str(folder), "no_pillow": case.no_pillow})
    spec = root / "spec.json"
    spec.write_text(json.dumps({"jobs": jobs, "timeout": timeout}))
    env = {**os.environ, "PYTHONPATH": str(repo)}
    subprocess.run([sys.executable, __file__, "--worker", str(spec)], env=env, check=True)
    out = []
    for job, before, (code, seconds, peak) in zip(
        jobs, befores, json.loads(spec.read_text())["results"], strict=True
    ):
        folder = Path(job["folder"])
        stray = sorted(_files(folder / "in") - before)
        stray += [f"{sub}/{f}" for sub in ("cwd", "tmp", "home") for f in sorted(_files(folder / sub))]
        out.append(Outcome(code, seconds, peak, (folder / "stderr").read_text(errors="replace"), stray))
    return out


def main() -> None:
    if "--worker" in sys.argv:
        _worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
        return
    repo = Path(sys.argv[sys.argv.index("--repo") + 1]) if "--repo" in sys.argv else REPO
    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    try:
        outcomes = run_cases(CASES, root, repo, timeout=300.0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("| input | exit | seconds | peak MB | stderr (last line) |\n|---|---|---|---|---|")
    for case, o in zip(CASES, outcomes, strict=True):
        lines = o.stderr.strip().splitlines()
        last = (lines or [""])[-1][:110].replace("|", "/")
        print(f"| {case.name} | {o.code} | {o.seconds:.1f} | {o.peak_mb:.0f} | {last} ({len(lines)} lines) |")


if __name__ == "__main__":
    main()
