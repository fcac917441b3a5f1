"""The command-line interface: thin Typer commands over the library (one module per command)."""

import os


def _bounded_spin() -> None:
    """Before torch loads: OpenMP threads spin only briefly (~10 us) before sleeping, unless the user chose.

    libgomp's default (spin ~300,000 rounds, a few ms) made small CPU work 20-50x slower on a busy,
    oversubscribed machine; never spinning (OMP_WAIT_POLICY=PASSIVE, this tool's earlier setting) made
    back-to-back small parallel regions 1.7-1.9x slower on an idle one: `speccert bench norms` on ResNet-18
    at 2 threads, auto's upper bounds 29.9 s passive, 15.4 s default (Fantastic-Four 5.0-5.1 s either way).
    GOMP_SPINCOUNT=1000 keeps both: on the 2-core build machine, idle, auto on every ResNet-18 layer
    35.7 s passive / 18.9 s default / 20.9 s; beside two busy processes, its layer3 6.8 / 13.8 / 5.9 s and
    four norms/bounds test files 66 / 78 / 72 s. libgomp reads GOMP_SPINCOUNT before OMP_WAIT_POLICY;
    other OpenMP runtimes ignore it and get PASSIVE as before. Either variable set by the user wins.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "1000"
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_bounded_spin()


def _keep_freed_memory() -> None:
    """Ask glibc to serve large blocks from the heap and keep freed memory (the command-line tool only).

    Norm computations allocate and free hundreds of MB-sized tensors; glibc maps each one afresh and
    the kernel zero-fills every page on first touch: on a ResNet-18 that was 10 s of system time out of
    40 s of CPU (measured with /usr/bin/time on the 2-core build machine), 2 s with mmap disabled. A
    short-lived process loses nothing by keeping its memory. No-op off glibc;
    SPECCERT_SYSTEM_MALLOC=1 turns it off. The library never does this: it is a process-wide setting.
    """
    if os.environ.get("SPECCERT_SYSTEM_MALLOC") == "1":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # glibc's mallopt parameter numbers
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()
