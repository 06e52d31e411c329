"""Detection losses shared by the CenterPoint and TransFusion heads (no torchvision dependency).

* :func:`gaussian_focal_loss` -- the CornerNet / CenterNet / CenterPoint penalty-reduced focal loss on a Gaussian
  heatmap (alpha 2, beta 4), normalised by the number of positive cells (cells whose target is exactly 1).
* :func:`sigmoid_focal_loss` -- RetinaNet's focal loss on per-class sigmoid logits (alpha 0.25, gamma 2).
* :func:`weighted_l1_loss` -- element-wise L1 with broadcastable weights (CenterPoint's masked box regression with
  code weights, TransFusion's box L1).

Every function computes in float32 (inputs under bf16/fp16 autocast are upcast), so the losses behave the same
with and without autocast.
"""

from __future__ import annotations

import torch

from perception._validate import check_tensor

__all__ = ["gaussian_focal_loss", "sigmoid_focal_loss", "weighted_l1_loss", "clamped_sigmoid"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCTIONS = ("none", "sum", "mean")


def clamped_sigmoid(logits: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``sigmoid(logits)`` clamped to ``[eps, 1 - eps]`` (CenterPoint's ``_sigmoid``).

    The clamp keeps ``log(p)`` and ``log(1 - p)`` finite; like CenterPoint, cells whose probability is clamped get
    no gradient (they are already confidently right or wrong).
    """
    return torch.sigmoid(logits.float()).clamp(min=eps, max=1.0 - eps)


def _check_pair(pred: object, target: object, pred_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = check_tensor(pred_name, pred, dtype=_FLOATS)
    t = check_tensor("target", target, dtype=_FLOATS)
    if p.shape != t.shape:
        raise ValueError(
            f"{pred_name} and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}"
        )
    if p.device != t.device:
        raise ValueError(f"{pred_name} and target must be on the same device, got {p.device} and {t.device}")
    return p, t


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_avg_factor(avg_factor: float | None) -> None:
    if avg_factor is not None and not (float(avg_factor) > 0.0):
        raise ValueError(f"avg_factor must be > 0 or None, got {avg_factor!r}")


def gaussian_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    from_logits: bool = True,
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = 1e-4,
    avg_factor: float | None = None,
) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss on a Gaussian heatmap (CornerNet eq. 1, as CenterPoint uses it).

    With ``p`` the predicted probability clamped to ``[eps, 1 - eps]`` and ``y`` the target::

        pos = y == 1:   -(1 - p)^alpha * log(p)
        neg = y <  1:   -(1 - y)^beta * p^alpha * log(1 - p)
        loss = (sum(pos) + sum(neg)) / avg_factor

    where ``avg_factor`` defaults to ``max(number of cells with y == 1, 1)`` over the whole tensor (so an image
    without objects is normalised by 1, as CenterPoint does).

    Args:
        pred: ``(...)`` float logits (``from_logits=True``, the default: the sigmoid is applied and clamped here, as
            CenterPoint's ``_sigmoid``) or probabilities in ``[0, 1]`` (``from_logits=False``; clamped too).
        target: ``(...)`` same shape, values in ``[0, 1]``; exactly ``1.0`` marks an object centre.
        from_logits: whether ``pred`` holds logits.
        alpha: focusing exponent on the prediction (2 in CenterPoint).
        beta: exponent of the penalty reduction around the centres (4 in CenterPoint).
        eps: probability clamp.
        avg_factor: normaliser; ``None`` -> the number of positive cells (at least 1).

    Returns:
        float32 scalar.

    Raises:
        TypeError / ValueError: non-float tensors, different shapes or devices, ``avg_factor <= 0``.
    """
    p, t = _check_pair(pred, target, "pred")
    _check_avg_factor(avg_factor)
    prob = clamped_sigmoid(p, eps) if from_logits else p.float().clamp(min=eps, max=1.0 - eps)
    t = t.float()
    pos = t.eq(1.0)
    pos_loss = torch.log(prob) * (1.0 - prob).pow(alpha)
    neg_loss = torch.log(1.0 - prob) * prob.pow(alpha) * (1.0 - t).pow(beta)
    total = torch.where(pos, pos_loss, neg_loss).sum()
    norm = float(avg_factor) if avg_factor is not None else pos.sum().clamp(min=1).float()
    return -total / norm


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    *,
    weight: torch.Tensor | None = None,
    avg_factor: float | None = None,
) -> torch.Tensor:
    """RetinaNet's focal loss on independent per-class sigmoids (Lin et al. 2017, eq. 5).

    ``loss = alpha_t * (1 - p_t)^gamma * BCE(logits, targets)`` with ``p_t = p y + (1 - p)(1 - y)`` and
    ``alpha_t = alpha y + (1 - alpha)(1 - y)`` (no alpha weighting when ``alpha < 0``). Soft targets in ``[0, 1]``
    are allowed. The cross-entropy is computed from the logits (numerically stable, no clamp).

    Args:
        logits: ``(...)`` float class logits.
        targets: ``(...)`` same shape, in ``[0, 1]`` (one-hot for hard labels; all-zero rows are background).
        alpha: positive-class weight in ``[0, 1]``, or ``< 0`` to disable.
        gamma: focusing exponent ``>= 0``.
        reduction: ``"none"`` (element-wise, float32 ``(...)``), ``"sum"`` or ``"mean"``.
        weight: optional element weights broadcastable to ``logits`` (e.g. ``(N, 1)`` per-query weights).
        avg_factor: with ``reduction="mean"``, divide the sum by this instead of the element count.

    Returns:
        float32 scalar, or ``(...)`` for ``reduction="none"``.
    """
    x, y = _check_pair(logits, targets, "logits")
    _check_reduction(reduction)
    _check_avg_factor(avg_factor)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if alpha > 1:
        raise ValueError(f"alpha must be <= 1 (or < 0 to disable), got {alpha}")
    x, y = x.float(), y.float()
    prob = torch.sigmoid(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = prob * y + (1.0 - prob) * (1.0 - y)
    loss = ce * (1.0 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * y + (1.0 - alpha) * (1.0 - y))
    if weight is not None:
        loss = loss * _check_weight(weight, loss)
    return _reduce(loss, reduction, avg_factor)


def weighted_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    reduction: str = "sum",
    avg_factor: float | None = None,
) -> torch.Tensor:
    """L1 loss ``weight * |pred - target|``.

    Entries whose weight is exactly 0 contribute exactly 0 and no gradient, even where ``pred`` or ``target`` is
    NaN/inf (padded object slots may hold anything). A non-finite value under a non-zero weight gives a non-finite
    loss (it is not hidden).

    Args:
        pred: ``(...)`` float predictions.
        target: ``(...)`` same shape.
        weight: optional weights broadcastable to ``pred`` (e.g. a ``(B, K, 1)`` object mask times ``(D,)`` code
            weights).
        reduction: ``"none"``, ``"sum"`` (default) or ``"mean"``.
        avg_factor: with ``reduction="mean"``, divide the sum by this instead of the element count (CenterPoint
            divides by the number of objects).

    Returns:
        float32 scalar, or ``(...)`` for ``reduction="none"``.
    """
    p, t = _check_pair(pred, target, "pred")
    _check_reduction(reduction)
    _check_avg_factor(avg_factor)
    diff = p.float() - t.float()
    if weight is None:
        loss = diff.abs()
    else:
        w = _check_weight(weight, diff).expand_as(diff)
        active = w != 0
        loss = torch.where(active, torch.where(active, diff, 0.0).abs() * w, 0.0)
    return _reduce(loss, reduction, avg_factor)


def _check_weight(weight: object, like: torch.Tensor) -> torch.Tensor:
    w = check_tensor("weight", weight, dtype=_FLOATS + (torch.bool,))
    try:
        torch.broadcast_shapes(w.shape, like.shape)
    except RuntimeError:
        raise ValueError(
            f"weight of shape {tuple(w.shape)} does not broadcast to the loss shape {tuple(like.shape)}"
        ) from None
    if torch.broadcast_shapes(w.shape, like.shape) != like.shape:
        raise ValueError(f"weight of shape {tuple(w.shape)} would enlarge the loss shape {tuple(like.shape)}")
    return w.to(device=like.device, dtype=torch.float32)


def _reduce(loss: torch.Tensor, reduction: str, avg_factor: float | None) -> torch.Tensor:
    if avg_factor is not None and reduction != "mean":
        raise ValueError(f"avg_factor is only used with reduction='mean', got reduction={reduction!r}")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (float(avg_factor) if avg_factor is not None else max(loss.numel(), 1))
