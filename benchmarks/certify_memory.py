"""Where `speccert certify` spends its memory: peak resident memory and seconds per phase.

Runs `speccert certify ARGS...` in this process with the phases below wrapped; before each phase the
kernel's peak-RSS counter is reset (`/proc/self/clear_refs` 5, Linux >= 4.0) and after it `VmHWM` is read,
so each row is the phase's own peak (nested phases fold their peak into the enclosing ones). A sampling
watcher misses short peaks and perturbs glibc's heap (a thread of its own); this does neither.

    OMP_NUM_THREADS=1 PYTHONPATH=. /work/venv-arch/bin/python benchmarks/certify_memory.py \
        shufflenet_v2-pt2-224.pt2 --data random-224.npz --method fantastic4 --lower-points 2

(the `.pt2` and data of `benchmarks/architectures.py --certify-224`). The table goes to stderr, after
the command's own output.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any

# (module, attribute, phase label): the attribute is replaced where it is looked up at call time.
PHASES: list[tuple[str, str, str]] = [
    ("speccert.cli.certify_cmd", "load_model", "load model (+ faithfulness check)"),
    ("speccert.bounds.certify", "lipschitz_bound", "norms per layer + compose"),
    ("speccert.bounds.certify", "certify_samples", "certificates (constructors + per-sample pass)"),
    ("speccert.bounds.sample_pass", "_certificates", "  certificate constructors"),
    ("speccert.bounds.sample_pass", "margins64", "  float64 margins (per batch)"),
    ("speccert.bounds.sample_pass", "_record", "  radii of every kind (per batch)"),
    ("speccert.bounds.certify", "_lower_bound", "empirical lower bound"),
    ("speccert.bounds.certify", "plain_inference_seconds", "plain inference (baseline timing)"),
    ("speccert.cli.certify_cmd", "render", "report rendering"),
    ("speccert.cli.certify_cmd", "write_json", "JSON report"),
]
KIND_PHASES = ["global", "pairwise", "margin", "local", "crown", "second_order"]

_open: list[dict[str, float]] = []  # the peak so far of each phase that is running
rows: dict[str, dict[str, float]] = {}


def _hwm_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 2**20


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) / 2**20


def _reset_hwm() -> None:
    peak = _hwm_gb()
    for frame in _open:  # what was reached so far still counts for the enclosing phases
        frame["peak"] = max(frame["peak"], peak)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        _reset_hwm()
        frame = {"peak": 0.0, "start": _rss_gb()}
        _open.append(frame)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds = time.perf_counter() - t0
            _open.pop()
            peak = max(frame["peak"], _hwm_gb())
            for outer in _open:
                outer["peak"] = max(outer["peak"], peak)
            row = rows.setdefault(label, {"calls": 0, "seconds": 0.0, "peak": 0.0, "start": frame["start"]})
            row["calls"] += 1
            row["seconds"] += seconds
            row["peak"] = max(row["peak"], peak)

    return inner


def _wrap_kinds() -> None:
    """Each certificate kind's constructor as its own phase."""
    from speccert.bounds.certificate import CERTIFICATES

    for name in KIND_PHASES:
        if name in CERTIFICATES:
            cls = CERTIFICATES.get(name)
            cls.__init__ = _wrap(f"    {name} (constructor)", cls.__init__)  # type: ignore[method-assign]


def main() -> None:
    rows["python + torch import"] = {"calls": 1, "seconds": 0.0, "peak": 0.0, "start": 0.0}
    t0 = time.perf_counter()
    import torch  # noqa: F401

    import speccert.cli.app as app

    rows["python + torch import"].update(seconds=time.perf_counter() - t0, peak=_hwm_gb())
    for mod, attr, label in PHASES:
        m = importlib.import_module(mod)
        setattr(m, attr, _wrap(label, getattr(m, attr)))
    _wrap_kinds()
    sys.argv = ["speccert", "certify", *sys.argv[1:]]
    code = app.main()
    print(
        f"\nexit {code}; peak RSS per phase (GiB; 'at start': resident when the phase began)", file=sys.stderr
    )
    print(f"{'phase':50s} {'calls':>5s} {'seconds':>8s} {'at start':>8s} {'peak':>6s}", file=sys.stderr)
    for label, r in rows.items():
        print(
            f"{label:50s} {r['calls']:5.0f} {r['seconds']:8.1f} {r['start']:8.2f} {r['peak']:6.2f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
