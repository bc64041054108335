"""Losses for heatmap regression: GLiP (eq. 6-8) and the paper's baselines.

Every loss takes the network's raw output ``pred`` (B, L, Z, Y, X) and the Gaussian
heatmaps ``target`` of the same shape (values in [0, 1]) and returns a scalar.

- GLiP acts on the raw, unbounded output: optimal-transport term (eq. 8) plus lambda times
  the grid-based Lipschitz penalty (eq. 6-7).
- The baselines (WCE, focal, MSE, L1, smooth L1) act on sigmoid(output), written with
  log-sigmoid so that large logits stay finite.
- Any baseline can add the grid penalty on the raw output ("+gp" names).

Every loss takes an optional ``known`` mask (B, L) of the landmarks each sample has truth
for (a case may lack an ostium). An unknown landmark's map gives no gradient and does not
count in any average (its target is ignored, whatever it holds); with every landmark known
(or ``known`` None) the losses are exactly the unmasked ones.

Penalty variants (eq. 6 over axis-aligned neighbour pairs only):

- ``"code"`` (default; the authors' code, which produced the paper's figures):
  t = 1/sqrt(3); for each axis, the mean over that axis's edges (and over batch and
  landmarks) of (|f_u - f_v| - t)^2, summed over the three axes.
- ``"paper"``: t = 1; the sum over all edges and landmarks of each sample, averaged over
  the batch (eq. 7's 1/|B| sum_b). Its size grows with the volume, so its lambda is not
  comparable with the code variant's.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

PenaltyVariant = Literal["code", "paper"]
PENALTY_VARIANTS: tuple[str, ...] = get_args(PenaltyVariant)

BASELINE_NAMES: tuple[str, ...] = ("wce", "focal", "mse", "l1", "smoothl1")
LOSS_NAMES: tuple[str, ...] = (
    "glip",
    "ot",
    *BASELINE_NAMES,
    *(f"{n}+gp" for n in BASELINE_NAMES),
)
"""Every name :func:`make_loss` accepts. "ot" is GLiP without its penalty (the paper's
ablation 4.4.1); "glip" already contains the penalty, so it has no "+gp" form."""

_EPS = 1e-12


def check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ValueError unless pred and target are floating 5-D (B, L, Z, Y, X) tensors of
    one shape with target values in [0, 1]."""
    if pred.ndim != 5:
        raise ValueError(f"pred must be 5-D (B, L, Z, Y, X), got shape {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise ValueError(f"pred and target must be floating, got {pred.dtype}, {target.dtype}")
    if target.numel() and bool((target.min() < -1e-6) | (target.max() > 1 + 1e-6)):
        raise ValueError("target heatmaps must lie in [0, 1]")


def check_known(known: torch.Tensor | None, pred: torch.Tensor) -> torch.Tensor | None:
    """The (B, L) bool mask of known landmarks, or None when every landmark is known (the
    unmasked path). Raises ValueError for a wrong shape or a batch with nothing known."""
    if known is None:
        return None
    if tuple(known.shape) != tuple(pred.shape[:2]):
        raise ValueError(
            f"known must be (B, L) = {tuple(pred.shape[:2])}, got {tuple(known.shape)}"
        )
    mask = known.to(device=pred.device, dtype=torch.bool)
    if bool(mask.all()):
        return None
    if not bool(mask.any()):
        raise ValueError("no landmark of the batch is known: nothing to learn from")
    return mask


def _known_maps(
    pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked pred and target, reduced to the known landmarks' maps (K, Z, Y, X) when some
    are unknown; unchanged when all are known."""
    check_pair(pred, target)
    mask = check_known(known, pred)
    if mask is None:
        return pred, target
    return pred[mask], target[mask]


def _check_variant(variant: str) -> PenaltyVariant:
    if variant not in PENALTY_VARIANTS:
        raise ValueError(f"unknown penalty variant {variant!r}; valid: {PENALTY_VARIANTS}")
    return variant  # type: ignore[return-value]


def grid_penalty(
    pred: torch.Tensor, variant: PenaltyVariant = "code", known: torch.Tensor | None = None
) -> torch.Tensor:
    """Grid-based Lipschitz penalty (eq. 6) of raw outputs (B, L, Z, Y, X).

    Axes with a single voxel have no edges and contribute nothing. With a ``known`` mask
    (B, L), only the known landmarks' maps are penalised: the code variant averages over
    them, the paper variant sums them and still divides by the batch size.
    """
    if pred.ndim != 5:
        raise ValueError(f"pred must be 5-D (B, L, Z, Y, X), got shape {tuple(pred.shape)}")
    variant = _check_variant(variant)
    mask = check_known(known, pred)
    b = pred.shape[0]
    maps = pred if mask is None else pred[mask][:, None]  # (K, 1, Z, Y, X): known maps only
    t = 1.0 / math.sqrt(3.0) if variant == "code" else 1.0
    total = pred.new_zeros(())
    for dim in (2, 3, 4):
        if maps.shape[dim] < 2:
            continue
        sq = (torch.diff(maps, dim=dim).abs() - t) ** 2
        total = total + (sq.mean() if variant == "code" else sq.sum())
    if variant == "paper":
        total = total / b
    return total


def ot_term(
    pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
) -> torch.Tensor:
    """Optimal-transport term, eq. (8).

    Per landmark: minus the heatmap-weighted mean of the raw output plus the
    (1 - h)-weighted mean, weights pooled over batch and voxels; summed over landmarks and
    multiplied by 1 / (|B| N_l). A landmark whose heatmap is all zero in the batch
    contributes only its (1 - h) term (its weights' sum is floored, not divided by zero).

    With a ``known`` mask (B, L), each landmark pools only the samples that know it, a
    landmark no sample knows contributes nothing, and |B| N_l becomes the number of known
    (sample, landmark) pairs.
    """
    check_pair(pred, target)
    mask = check_known(known, pred)
    b, n_l = pred.shape[0], pred.shape[1]
    dims = (0, 2, 3, 4)
    h = target.to(pred.dtype)
    if mask is None:
        pos = (h * pred).sum(dims) / h.sum(dims).clamp_min(_EPS)
        neg = ((1 - h) * pred).sum(dims) / (1 - h).sum(dims).clamp_min(_EPS)
        return (neg - pos).sum() / (b * n_l)
    m = mask[:, :, None, None, None]
    wp = torch.where(m, h, 0.0)  # the unknown maps' targets never enter, even NaN ones
    wn = torch.where(m, 1 - h, 0.0)
    f = torch.where(m, pred, 0.0)
    pos = (wp * f).sum(dims) / wp.sum(dims).clamp_min(_EPS)
    neg = (wn * f).sum(dims) / wn.sum(dims).clamp_min(_EPS)
    return (neg - pos).sum() / mask.sum()


class GLiPLoss(nn.Module):
    """GLiP: eq. (8) plus ``lam`` times the grid penalty. ``GLiPLoss()`` is the paper's best
    setting (lambda 10, code variant); ``lam=0`` gives the OT-only ablation."""

    def __init__(self, lam: float = 10.0, variant: PenaltyVariant = "code") -> None:
        super().__init__()
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        self.lam = float(lam)
        self.variant: PenaltyVariant = _check_variant(variant)

    def terms(
        self, pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss and its parts: {"loss", "ot", "penalty"}."""
        ot = ot_term(pred, target, known)
        pen = grid_penalty(pred, self.variant, known) if self.lam > 0 else pred.new_zeros(())
        return {"loss": ot + self.lam * pen, "ot": ot, "penalty": pen}

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.terms(pred, target, known)["loss"]

    def extra_repr(self) -> str:
        return f"lam={self.lam}, variant={self.variant!r}"


def weighted_bce(
    pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted cross-entropy on sigmoid(pred): w = 1 - mean(target) over the whole batch
    tensor; positives weighted 2w, negatives 2 - 2w; mean over all elements (of the known
    landmarks' maps only, with a ``known`` mask)."""
    pred, target = _known_maps(pred, target, known)
    h = target.to(pred.dtype)
    w = 1 - h.mean().detach()
    loss = -(2 * w) * h * F.logsigmoid(pred) - (2 - 2 * w) * (1 - h) * F.logsigmoid(-pred)
    return loss.mean()


def focal(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.8,
    gamma: float = 2.0,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal loss on sigmoid(pred) with soft targets:
    mean of -alpha h (1-p)^gamma log p - (1-alpha) (1-h) p^gamma log(1-p)
    (over the known landmarks' maps only, with a ``known`` mask)."""
    pred, target = _known_maps(pred, target, known)
    h = target.to(pred.dtype)
    p = torch.sigmoid(pred)
    q = torch.sigmoid(-pred)  # 1 - p without cancellation
    loss = -alpha * h * q**gamma * F.logsigmoid(pred) - (1 - alpha) * (1 - h) * p**gamma * (
        F.logsigmoid(-pred)
    )
    return loss.mean()


class _Baseline(nn.Module):
    """A baseline loss on sigmoid(output), with an optional grid penalty on the raw output."""

    def __init__(self, name: str, lam: float = 0.0, variant: PenaltyVariant = "code") -> None:
        super().__init__()
        if name not in BASELINE_NAMES:
            raise ValueError(f"unknown baseline {name!r}; valid: {BASELINE_NAMES}")
        if not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be finite and >= 0, got {lam}")
        self.name = name
        self.lam = float(lam)
        self.variant: PenaltyVariant = _check_variant(variant)

    def base(
        self, pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.name == "wce":
            return weighted_bce(pred, target, known)
        if self.name == "focal":
            return focal(pred, target, known=known)
        pred, target = _known_maps(pred, target, known)
        p, h = torch.sigmoid(pred), target.to(pred.dtype)
        if self.name == "mse":
            return F.mse_loss(p, h)
        if self.name == "l1":
            return F.l1_loss(p, h)
        return F.smooth_l1_loss(p, h, beta=1.0)

    def terms(
        self, pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The loss and its parts: {"loss", "base", "penalty"}."""
        base = self.base(pred, target, known)
        pen = grid_penalty(pred, self.variant, known) if self.lam > 0 else pred.new_zeros(())
        return {"loss": base + self.lam * pen, "base": base, "penalty": pen}

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.terms(pred, target, known)["loss"]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, lam={self.lam}, variant={self.variant!r}"


def make_loss(name: str, lam: float = 10.0, variant: PenaltyVariant = "code") -> nn.Module:
    """The loss called ``name`` (one of :data:`LOSS_NAMES`).

    ``lam`` and ``variant`` set the grid penalty of "glip" and of the "+gp" baselines; "ot"
    and the plain baselines have none. Each returned module maps (pred, target, known=None)
    to a scalar and has ``terms(pred, target, known=None)`` giving its parts.
    """
    key = name.strip().lower()
    if key not in LOSS_NAMES:
        hint = " ('glip' already includes the grid penalty)" if key == "glip+gp" else ""
        raise ValueError(f"unknown loss {name!r}{hint}; valid names: {', '.join(LOSS_NAMES)}")
    if key == "glip":
        return GLiPLoss(lam=lam, variant=variant)
    if key == "ot":
        return GLiPLoss(lam=0.0, variant=variant)
    base, _, gp = key.partition("+")
    return _Baseline(base, lam=lam if gp else 0.0, variant=variant)


__all__ = [
    "BASELINE_NAMES",
    "LOSS_NAMES",
    "PENALTY_VARIANTS",
    "GLiPLoss",
    "PenaltyVariant",
    "check_known",
    "check_pair",
    "focal",
    "grid_penalty",
    "make_loss",
    "ot_term",
    "weighted_bce",
]
