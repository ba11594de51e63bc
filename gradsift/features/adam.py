"""Pure math of the gradient features: the Adam-aware feature, the flat parameter layout, row normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradsift.config import AdamForm

# The reference LESS code's constants: it ignores the optimizer's own betas and eps.
LESS_BETAS = (0.9, 0.999)
LESS_EPS = 1e-8


def adam_feature(
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    betas: tuple[float, float],
    eps: float,
    form: AdamForm = "corrected",
) -> torch.Tensor:
    """The update direction Adam would take from ``grad`` at a checkpoint (SPEC §1.3).

    ``grad`` is (batch, n) or (n,); ``exp_avg``/``exp_avg_sq`` are the checkpoint's moments (n,),
    ``step`` the optimizer steps already taken. ``corrected``: bias-corrected moments with eps
    outside the square root, as Adam applies them. ``less``: the reference code's formula,
    m' / sqrt(v' + 1e-8) with betas 0.9/0.999 and no bias correction.
    """
    b1, b2 = LESS_BETAS if form == "less" else betas
    # The bias corrections are folded into the coefficients, so the (batch, n) tensor is read and
    # written four times, not ten: this runs on every coordinate of every example.
    c1, c2 = (1.0, 1.0) if form == "less" else (1 - b1 ** (step + 1), 1 - b2 ** (step + 1))
    v = torch.addcmul(exp_avg_sq * (b2 / c2), grad, grad, value=(1 - b2) / c2)
    denominator = v.add_(LESS_EPS).sqrt_() if form == "less" else v.sqrt_().add_(eps)
    return torch.add(exp_avg * (b1 / c1), grad, alpha=(1 - b1) / c1).div_(denominator)


@dataclass
class AdamState:
    """A checkpoint's Adam moments, flattened in parameter order, with the step count, betas and eps."""

    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: int
    betas: tuple[float, float]
    eps: float

    def feature(self, grad: torch.Tensor, span: slice, form: AdamForm) -> torch.Tensor:
        """``adam_feature`` of gradients of the parameters at ``span`` of the flat layout."""
        return adam_feature(grad, self.exp_avg[span], self.exp_avg_sq[span], self.step, self.betas, self.eps, form)


def flat_layout(shapes: Sequence[tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """(numels, offsets) of parameters of ``shapes`` laid end to end in one flat feature vector."""
    numels = [math.prod(s) for s in shapes]
    return numels, [sum(numels[:i]) for i in range(len(numels))]


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Unit L2 rows; an all-zero row stays zero (cosine 0 with everything, never NaN).

    Rows are first scaled by their largest magnitude, so squares of tiny entries cannot underflow."""
    tiny = torch.finfo(x.dtype).tiny
    x = x / x.abs().amax(dim=-1, keepdim=True).clamp_min(tiny)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(tiny)
