"""numba kernels of the KITTI evaluation: detection-to-ground-truth matching, score thresholds, precision, AP.

These follow the semantics of the official KITTI object devkit (``evaluate_object.cpp``: ``computeStatistics``,
``getThresholds``, ``eval_class``); :mod:`perception.evaluation.kitti` documents them for users.

All frames are concatenated: frame ``f`` owns ground-truth rows ``gt_off[f]:gt_off[f+1]``, detection rows
``dt_off[f]:dt_off[f+1]``, and an overlap block ``ov[ov_off[f]:ov_off[f+1]]`` holding the row-major
``(n_dt, n_gt)`` matrix of that frame (overlap of detection ``j`` with ground truth ``i`` at ``j * n_gt + i``).
DontCare overlaps (detection area criterion) are stored the same way in ``dc_ov`` with ``dc_off`` / ``dc_cnt``.

Ignore flags (int8) use the devkit's codes: ground truth ``0`` = counted, ``1`` = ignored (neighbouring class or
outside the difficulty; may absorb a detection but is neither TP nor FN), ``-1`` = other class (skipped);
detections ``0`` = evaluated, ``1`` = ignored (2D box lower than the difficulty's minimum height), ``-1`` = other
class.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: Number of sampled recall positions (0, 1/40, ..., 1) of the devkit.
N_SAMPLE_PTS = 41
#: Sentinel "no detection found yet" score of the devkit.
NO_DETECTION = -10000000.0


@njit(cache=True)
def _match_frame(
    ov: np.ndarray,
    o0: int,
    n_dt: int,
    n_gt: int,
    ig_gt: np.ndarray,
    ig_dt: np.ndarray,
    scores: np.ndarray,
    gt_alpha: np.ndarray,
    dt_alpha: np.ndarray,
    min_overlap: float,
    compute_fp: bool,
    thresh: float,
    dc_ov: np.ndarray,
    c0: int,
    n_dc: int,
    assigned: np.ndarray,
    below: np.ndarray,
    tp_scores: np.ndarray,
) -> tuple[int, int, int, float]:
    """Match one frame's detections to its ground truth (devkit ``computeStatistics``).

    ``ig_gt`` / ``gt_alpha`` are the frame's ``(n_gt,)`` slices, ``ig_dt`` / ``scores`` / ``dt_alpha`` its
    ``(n_dt,)`` slices; ``assigned`` / ``below`` are bool scratch of at least ``n_dt``. Without ``compute_fp``
    each ground truth takes the highest-scoring overlapping detection and the TP scores are written to
    ``tp_scores``; with it, detections scoring below ``thresh`` are left out, each ground truth takes the
    overlapping evaluated detection of greatest overlap (an ignored one only if no evaluated one overlaps), and
    false positives are counted, minus those inside DontCare areas (``n_dc > 0``).

    Returns:
        ``(tp, fp, fn, similarity)``: counts and the summed orientation similarity ``(1 + cos(da)) / 2`` of TPs.
    """
    for j in range(n_dt):
        assigned[j] = False
        below[j] = compute_fp and scores[j] < thresh
    tp = 0
    fp = 0
    fn = 0
    similarity = 0.0
    for i in range(n_gt):
        if ig_gt[i] == -1:
            continue
        det_idx = -1
        valid = NO_DETECTION
        max_overlap = 0.0
        assigned_ignored = False
        for j in range(n_dt):
            if ig_dt[j] == -1 or assigned[j] or below[j]:
                continue
            o = ov[o0 + j * n_gt + i]
            if not (o > min_overlap):
                continue
            if not compute_fp:
                if scores[j] > valid:
                    det_idx = j
                    valid = scores[j]
            elif (o > max_overlap or assigned_ignored) and ig_dt[j] == 0:
                max_overlap = o
                det_idx = j
                valid = 1.0
                assigned_ignored = False
            elif valid == NO_DETECTION and ig_dt[j] == 1:
                det_idx = j
                valid = 1.0
                assigned_ignored = True
        if valid == NO_DETECTION:
            if ig_gt[i] == 0:
                fn += 1
        elif ig_gt[i] == 1 or ig_dt[det_idx] == 1:
            assigned[det_idx] = True
        else:
            if compute_fp:
                similarity += (1.0 + math.cos(gt_alpha[i] - dt_alpha[det_idx])) / 2.0
            else:
                tp_scores[tp] = scores[det_idx]
            tp += 1
            assigned[det_idx] = True
    if compute_fp:
        for j in range(n_dt):
            if not (assigned[j] or ig_dt[j] != 0 or below[j]):
                fp += 1
        n_stuff = 0
        for k in range(n_dc):
            for j in range(n_dt):
                if assigned[j] or ig_dt[j] != 0 or below[j]:
                    continue
                if dc_ov[c0 + j * n_dc + k] > min_overlap:
                    assigned[j] = True
                    n_stuff += 1
        fp -= n_stuff
    return tp, fp, fn, similarity


@njit(cache=True)
def tp_scores_all(
    ov: np.ndarray,
    ov_off: np.ndarray,
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    ig_gt: np.ndarray,
    ig_dt: np.ndarray,
    scores: np.ndarray,
    min_overlap: float,
) -> np.ndarray:
    """Scores (float64 ``(T,)``) of the true positives over all frames, each ground truth taking its
    highest-scoring detection with overlap > ``min_overlap`` (the devkit's first pass)."""
    n_frames = gt_off.shape[0] - 1
    out = np.empty(gt_off[n_frames], np.float64)
    n_out = 0
    max_dt = 0
    for f in range(n_frames):
        max_dt = max(max_dt, dt_off[f + 1] - dt_off[f])
    assigned = np.zeros(max_dt, np.bool_)
    below = np.zeros(max_dt, np.bool_)
    dummy = np.zeros(1, np.float64)
    for f in range(n_frames):
        g0, g1 = gt_off[f], gt_off[f + 1]
        d0, d1 = dt_off[f], dt_off[f + 1]
        frame_tp = np.empty(g1 - g0, np.float64)
        tp, _, _, _ = _match_frame(
            ov, ov_off[f], d1 - d0, g1 - g0, ig_gt[g0:g1], ig_dt[d0:d1], scores[d0:d1], dummy, dummy,
            min_overlap, False, 0.0, dummy, 0, 0, assigned, below, frame_tp,
        )  # fmt: skip
        out[n_out : n_out + tp] = frame_tp[:tp]
        n_out += tp
    return out[:n_out]


@njit(cache=True)
def score_thresholds(tp_scores: np.ndarray, n_gt: int) -> np.ndarray:
    """Score thresholds sampling recall at ``0, 1/40, ..., 1`` (devkit ``getThresholds``), float64 ``(<=41,)``.

    The TP scores are sorted in descending order; a score is kept when its recall ``(i+1)/n_gt`` is at least as
    close to the current target recall as the next one, and the target then advances by 1/40. With fewer than
    about 40 true positives fewer than 41 thresholds exist, so the high-recall entries stay 0 (devkit behaviour).
    """
    v = -np.sort(-tp_scores)
    out = np.empty(v.shape[0], np.float64)
    n = 0
    current = 0.0
    last = v.shape[0] - 1
    for i in range(v.shape[0]):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < last else l_recall
        if (r_recall - current) < (current - l_recall) and i < last:
            continue
        out[n] = v[i]
        n += 1
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return out[:n]


@njit(cache=True)
def pr_counts(
    ov: np.ndarray,
    ov_off: np.ndarray,
    gt_off: np.ndarray,
    dt_off: np.ndarray,
    ig_gt: np.ndarray,
    ig_dt: np.ndarray,
    scores: np.ndarray,
    gt_alpha: np.ndarray,
    dt_alpha: np.ndarray,
    min_overlap: float,
    thresholds: np.ndarray,
    dc_ov: np.ndarray,
    dc_off: np.ndarray,
    dc_cnt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN (int64 ``(T,)``) and summed orientation similarity (float64 ``(T,)``) over all frames for
    each score threshold (the devkit's second pass)."""
    n_t = thresholds.shape[0]
    n_frames = gt_off.shape[0] - 1
    tps = np.zeros(n_t, np.int64)
    fps = np.zeros(n_t, np.int64)
    fns = np.zeros(n_t, np.int64)
    sims = np.zeros(n_t, np.float64)
    max_dt = 0
    for f in range(n_frames):
        max_dt = max(max_dt, dt_off[f + 1] - dt_off[f])
    for t in range(n_t):
        assigned = np.zeros(max_dt, np.bool_)
        below = np.zeros(max_dt, np.bool_)
        dummy = np.zeros(1, np.float64)
        for f in range(n_frames):
            g0, g1 = gt_off[f], gt_off[f + 1]
            d0, d1 = dt_off[f], dt_off[f + 1]
            tp, fp, fn, sim = _match_frame(
                ov, ov_off[f], d1 - d0, g1 - g0, ig_gt[g0:g1], ig_dt[d0:d1], scores[d0:d1],
                gt_alpha[g0:g1], dt_alpha[d0:d1], min_overlap, True, thresholds[t],
                dc_ov, dc_off[f], dc_cnt[f], assigned, below, dummy,
            )  # fmt: skip
            tps[t] += tp
            fps[t] += fp
            fns[t] += fn
            sims[t] += sim
    return tps, fps, fns, sims


def interpolated_curve(numer: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """float64 ``(41,)``: ``numer / denom`` per threshold (0 where ``denom`` is 0), then each entry replaced by the
    maximum of itself and all entries to its right; entries past the last threshold stay 0."""
    curve = np.zeros(N_SAMPLE_PTS, np.float64)
    n = min(len(numer), N_SAMPLE_PTS)
    d = denom[:n].astype(np.float64)
    curve[:n] = np.where(d > 0, numer[:n] / np.where(d > 0, d, 1.0), 0.0)
    curve[:n] = np.maximum.accumulate(curve[::-1])[::-1][:n]
    return curve


def ap_r11(curve: np.ndarray) -> float:
    """AP in percent from a ``(41,)`` curve at recall 0, 0.1, ..., 1 (every 4th entry), as the original devkit."""
    return float(curve[0:N_SAMPLE_PTS:4].sum() / 11.0 * 100.0)


def ap_r40(curve: np.ndarray) -> float:
    """AP in percent from a ``(41,)`` curve at recall 1/40, ..., 1 (entries 1..40), as the 2019 devkit."""
    return float(curve[1:N_SAMPLE_PTS].sum() / 40.0 * 100.0)
