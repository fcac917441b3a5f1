"""The command-line interface: thin Typer commands over the library (one module per command)."""

import os

# Before torch loads: OpenMP's default spin-waiting made small CPU work 20-50x slower on a busy machine
# (measured on the shared 2-core build machine); passive waiting costs nothing measurable when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
