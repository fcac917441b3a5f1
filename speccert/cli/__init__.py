"""The command-line interface: thin Typer commands over the library (one module per command)."""

import os

# Before torch loads: OpenMP's default spin-waiting made small CPU work 20-50x slower on a busy machine
# (measured on the shared 2-core build machine); passive waiting costs nothing measurable when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
