"""Data augmentation of the training batches of a fine-tuning run (`--augment NAME`).

Names (`parse_augment`):

- `none` (default): the batch as drawn.
- `shift:K` (`shift` = `shift:2`): every image of the batch is translated by (dy, dx), each drawn
  uniformly from {-K, ..., K}, independently per image, and the pixels that enter are zero *in data
  space* (the background of Fashion-MNIST/MNIST; with --mean/--std the fill is the normalised value of
  0, so the model sees what it would see for a shifted raw image). Labels are unchanged. For an image
  x of shape [C, H, W]:

      x'[c, i, j] = x[c, i - dy, j - dx]   if 0 <= i - dy < H and 0 <= j - dx < W,   else fill_c.

  Only inputs with spatial axes ([C, H, W], or [C, L] for 1-D signals: the shift on the last axes)
  can be shifted; a flat vector input is refused (usage error), since its layout is unknown.

Reproducibility: the shifts of step t are drawn from a CPU `torch.Generator` seeded by
(seed, t, rank), not from the global RNG, so a run resumed at step t draws the same shifts as an
uninterrupted one, the global RNG stream (and so every other random choice of the run) is the same
with and without augmentation, and CPU and CUDA runs shift identically (the offsets are drawn on the
CPU and moved). The certifier always measures the unaugmented validation data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from speccert.errors import UsageError
from speccert.training.batching import normalised

Tensor = torch.Tensor

AUGMENTS = ("none", "shift:K")
_DEFAULT_SHIFT = 2


@dataclass(frozen=True)
class Augment:
    """A parsed `--augment`: `kind` ("none" or "shift") and the shift bound `k` in pixels."""

    kind: str = "none"
    k: int = 0

    @property
    def name(self) -> str:
        """The canonical name (what checkpoints and reports record): "none" or "shift:K"."""
        return "none" if self.kind == "none" else f"{self.kind}:{self.k}"

    def describe(self) -> str:
        """One phrase for the run's notes."""
        if self.kind == "none":
            return "no augmentation"
        unit = "pixel" if self.k == 1 else "pixels"
        return f"each image translated by up to {self.k} {unit} per axis, zero fill, labels unchanged"

    def check_input(self, input_shape: tuple[int, ...]) -> None:
        """Usage error when the model's input (without the batch axis) has no axes to shift along."""
        if self.kind == "none":
            return
        if len(input_shape) < 2:
            raise UsageError(
                f"--augment {self.name} shifts images along their spatial axes; this model's input has "
                f"shape {list(input_shape)} (no channel and spatial axes): use --augment none"
            )
        spatial = input_shape[1:]
        if any(self.k >= s for s in spatial):
            raise UsageError(
                f"--augment {self.name}: a shift of {self.k} pixels is not smaller than the input's "
                f"spatial size {list(spatial)}"
            )

    def apply(self, x: Tensor, fill: Tensor, seed: int, step: int, rank: int = 0) -> Tensor:
        """The augmented batch `x` [B, C, *spatial] of optimiser step `step` (`fill` [C]: the value of
        a data-space 0 per channel, after normalisation)."""
        if self.kind == "none":
            return x
        return shift_batch(x, self.k, fill, step_generator(seed, step, rank))


def parse_augment(name: str) -> Augment:
    """`none`, `shift` (= shift:2) or `shift:K` with K a positive integer; anything else is a usage
    error naming the choices."""
    text = name.strip().lower()
    if text == "none":
        return Augment()
    kind, sep, arg = text.partition(":")
    if kind == "shift":
        if not sep:
            return Augment("shift", _DEFAULT_SHIFT)
        if arg.isdigit() and int(arg) >= 1:
            return Augment("shift", int(arg))
    raise UsageError(
        f"--augment {name!r}: choose none, shift (= shift:{_DEFAULT_SHIFT}) or shift:K with K a whole "
        "number of pixels >= 1"
    )


def data_zero(x: Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Tensor:
    """[C]: the value a data-space 0 pixel of `x` [B, C, ...] has after --mean/--std normalisation."""
    zero = torch.zeros((1, *x.shape[1:2]) + (1,) * (x.dim() - 2), dtype=x.dtype, device=x.device)
    return normalised(zero, mean, std).reshape(-1)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator that is a function of (seed, step, rank) only."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(step)) * 1_009 + int(rank) + 0x5EED)
    return g


def shift_batch(x: Tensor, k: int, fill: Tensor, gen: torch.Generator) -> Tensor:
    """Each image of `x` [B, C, *spatial] shifted by its own offsets in {-k..k} per spatial axis (the
    last one or two axes), the entering pixels set to `fill` [C] (see the module docstring)."""
    b, c = x.shape[0], x.shape[1]
    spatial = x.shape[2:]
    axes = min(2, len(spatial))
    offsets = torch.randint(-k, k + 1, (b, axes), generator=gen).to(x.device)
    padded_shape = list(x.shape)
    for axis in range(x.dim() - axes, x.dim()):
        padded_shape[axis] += 2 * k
    base = fill.to(dtype=x.dtype, device=x.device).reshape((1, c) + (1,) * len(spatial))
    padded = base.expand(padded_shape).clone()  # every pixel the fill, then the image in the middle
    inner = (slice(None),) * (x.dim() - axes) + (slice(k, -k),) * axes
    padded[inner] = x
    # Output pixel i of an axis reads padded index i + k - d (= input index i - d).
    out = padded
    for a in range(axes):
        axis = x.dim() - axes + a
        n = x.shape[axis]
        idx = torch.arange(n, device=x.device).unsqueeze(0) + k - offsets[:, a : a + 1]  # [B, n]
        shape = [b] + [1] * (x.dim() - 1)
        shape[axis] = n
        full = list(out.shape)
        full[axis] = n
        out = torch.gather(out, axis, idx.reshape(shape).expand(full))
    return out


def shift_offsets(seed: int, step: int, rank: int, batch: int, k: int, axes: int = 2) -> Tensor:
    """The offsets (dy, dx) `shift_batch` draws at `step` (for tests and reports)."""
    return torch.randint(-k, k + 1, (batch, axes), generator=step_generator(seed, step, rank))


__all__ = [
    "AUGMENTS",
    "Augment",
    "data_zero",
    "parse_augment",
    "shift_batch",
    "shift_offsets",
    "step_generator",
]
