"""nuScenes detection evaluation through the official devkit (``nuscenes.eval.detection``).

Typical use::

    results = detections_to_nusc_results(nusc, dets_by_token, class_names)   # LiDAR -> global, attributes
    path = write_results_json(results, out_dir / "results_nusc.json")        # atomic
    metrics = evaluate_nuscenes(nusc, path, "val", out_dir / "nuscenes")      # official NuScenesEval
    print(format_metrics(metrics))

The scores are the devkit's, computed by ``NuScenesEval`` with the ``detection_cvpr_2019`` configuration; this
module only converts, checks inputs up front (so a wrong split or a missing sample is a clear ``ValueError``
rather than a bare ``AssertionError`` deep in the devkit) and wraps the summary in a typed result.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import get_samples_of_custom_split
from nuscenes.eval.detection.constants import TP_METRICS
from nuscenes.eval.detection.evaluate import NuScenesEval
from nuscenes.utils.splits import create_splits_scenes

from perception.evaluation.nuscenes_results import (
    LIDAR_META,
    MAX_BOXES_PER_SAMPLE,
    MOVING_SPEED,
    default_attribute,
    detections_to_nusc_results,
    lidar_to_global_records,
    write_results_json,
)

__all__ = [
    "LIDAR_META",
    "MAX_BOXES_PER_SAMPLE",
    "MOVING_SPEED",
    "NuScenesMetrics",
    "default_attribute",
    "detections_to_nusc_results",
    "evaluate_nuscenes",
    "format_metrics",
    "lidar_to_global_records",
    "split_sample_tokens",
    "write_results_json",
]

#: Short names of the devkit's true-positive error metrics, as papers report them.
TP_SHORT_NAMES: dict[str, str] = {
    "trans_err": "ATE",
    "scale_err": "ASE",
    "orient_err": "AOE",
    "vel_err": "AVE",
    "attr_err": "AAE",
}

# The database version each predefined split belongs to (the devkit asserts the same).
_SPLIT_VERSION = {
    "train": "trainval",
    "val": "trainval",
    "train_detect": "trainval",
    "train_track": "trainval",
    "mini_train": "mini",
    "mini_val": "mini",
    "test": "test",
}


@dataclass(frozen=True)
class NuScenesMetrics:
    """The devkit's detection metrics (``metrics_summary.json``) as a typed record.

    Attributes:
        mean_ap: mAP over the ten classes and the four centre-distance thresholds, in ``[0, 1]``.
        nd_score: nuScenes detection score (NDS), in ``[0, 1]``.
        tp_errors: mean true-positive errors over classes, keyed by the devkit's names ``trans_err`` (m),
            ``scale_err`` (1 - IoU), ``orient_err`` (rad), ``vel_err`` (m/s), ``attr_err`` (1 - accuracy).
        class_aps: per-class AP averaged over the distance thresholds.
        class_aps_by_distance: per-class AP at each threshold (m): ``{class: {0.5: ap, 1.0: ..., ...}}``.
        class_tp_errors: per-class TP errors, ``{class: {"trans_err": ..., ...}}``; NaN where the devkit does
            not define one (attribute and velocity of barriers and cones, orientation of cones).
        eval_time: seconds the devkit spent scoring.
        output_dir: folder holding ``metrics_summary.json`` and ``metrics_details.json``.
    """

    mean_ap: float
    nd_score: float
    tp_errors: dict[str, float]
    class_aps: dict[str, float]
    class_aps_by_distance: dict[str, dict[float, float]]
    class_tp_errors: dict[str, dict[str, float]]
    eval_time: float
    output_dir: Path

    @property
    def mATE(self) -> float:  # noqa: N802 - the name every paper uses
        """Mean translation error (m)."""
        return self.tp_errors["trans_err"]

    @property
    def mASE(self) -> float:  # noqa: N802
        """Mean scale error (1 - IoU after aligning centre and heading)."""
        return self.tp_errors["scale_err"]

    @property
    def mAOE(self) -> float:  # noqa: N802
        """Mean orientation error (rad)."""
        return self.tp_errors["orient_err"]

    @property
    def mAVE(self) -> float:  # noqa: N802
        """Mean velocity error (m/s)."""
        return self.tp_errors["vel_err"]

    @property
    def mAAE(self) -> float:  # noqa: N802
        """Mean attribute error (1 - accuracy)."""
        return self.tp_errors["attr_err"]

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], output_dir: str | os.PathLike[str]) -> NuScenesMetrics:
        """Build from the devkit's summary (``DetectionMetrics.serialize()`` or ``metrics_summary.json``)."""
        return cls(
            mean_ap=float(summary["mean_ap"]),
            nd_score=float(summary["nd_score"]),
            tp_errors={k: float(summary["tp_errors"][k]) for k in TP_METRICS},
            class_aps={c: float(v) for c, v in summary["mean_dist_aps"].items()},
            class_aps_by_distance={
                c: {float(d): float(ap) for d, ap in aps.items()} for c, aps in summary["label_aps"].items()
            },
            class_tp_errors={
                c: {k: float(errs[k]) for k in TP_METRICS} for c, errs in summary["label_tp_errors"].items()
            },
            eval_time=float(summary["eval_time"]),
            output_dir=Path(output_dir),
        )

    def to_flat_dict(self) -> dict[str, float]:
        """``{"mAP", "NDS", "mATE", ..., "<class>_AP", "<class>_ATE", ...}`` for logs and TensorBoard."""
        out = {"mAP": self.mean_ap, "NDS": self.nd_score}
        out.update({"m" + TP_SHORT_NAMES[k]: v for k, v in self.tp_errors.items()})
        for c, ap in self.class_aps.items():
            out[f"{c}_AP"] = ap
            out.update({f"{c}_{TP_SHORT_NAMES[k]}": v for k, v in self.class_tp_errors[c].items()})
        return out


def split_sample_tokens(nusc: Any, eval_set: str) -> list[str]:
    """Sample tokens of ``eval_set`` in ``nusc``, as the devkit's ``load_gt`` selects them (by scene name).

    ``eval_set`` is a predefined split (``train``, ``val``, ``mini_train``, ``mini_val``, ``test``, ...) or a
    custom split listed in ``<dataroot>/<version>/splits.json``.

    Raises:
        ValueError: the split does not belong to ``nusc.version``, is unknown, or has no sample in ``nusc``.
    """
    splits = create_splits_scenes()
    if eval_set in splits:
        want = _SPLIT_VERSION.get(eval_set)
        if want is not None and not nusc.version.endswith(want):
            raise ValueError(
                f"eval_set {eval_set!r} belongs to a v1.0-{want} database, but nusc is {nusc.version!r}"
            )
        scenes = set(splits[eval_set])
        tokens = [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
    else:
        try:
            tokens = list(get_samples_of_custom_split(split_name=eval_set, nusc=nusc))
        except ValueError as e:
            raise ValueError(
                f"eval_set {eval_set!r} is neither a predefined split {sorted(splits)} nor a custom one: {e}"
            ) from None
    if not tokens:
        raise ValueError(
            f"eval_set {eval_set!r} has no sample in {nusc.version!r} at {nusc.dataroot}: no scene of the "
            "database carries one of the split's scene names"
        )
    return tokens


def evaluate_nuscenes(
    nusc: Any,
    results_path: str | os.PathLike[str],
    eval_set: str,
    output_dir: str | os.PathLike[str],
    *,
    config_name: str = "detection_cvpr_2019",
    verbose: bool = False,
    render_curves: bool = False,
    plot_examples: int = 0,
) -> NuScenesMetrics:
    """Score a results JSON with the official ``NuScenesEval`` and write its summary files.

    Args:
        nusc: the ``nuscenes.NuScenes`` database holding the ground truth.
        results_path: JSON written by :func:`write_results_json`; must cover exactly the samples of ``eval_set``
            (samples without detections as empty lists).
        eval_set: devkit split name, e.g. ``"val"`` or ``"mini_val"`` (see :func:`split_sample_tokens`).
        output_dir: receives ``metrics_summary.json`` and ``metrics_details.json`` (and ``plots/``, empty unless
            ``render_curves``); created if missing.
        config_name: devkit detection configuration.
        verbose: let the devkit print its progress and summary (it is silenced otherwise).
        render_curves: let the devkit render PR / TP curves (PDF, slow).
        plot_examples: number of sample visualisations the devkit renders (slow).

    Returns:
        The devkit's metrics as :class:`NuScenesMetrics`.

    Raises:
        FileNotFoundError: ``results_path`` does not exist.
        ValueError: malformed results, a split that does not fit ``nusc``, or result sample tokens that differ
            from the split's (the message lists how many are missing / extra and a few of them).
    """
    path = Path(results_path)
    if not path.is_file():
        raise FileNotFoundError(f"results_path {str(path)!r} is not a file")
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict) or "meta" not in data:
        raise ValueError(f"{path} must hold a JSON object with 'meta' and a 'results' object")
    _check_tokens(set(data["results"]), set(split_sample_tokens(nusc, eval_set)), eval_set, path)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet(not verbose):
        evaluator = NuScenesEval(
            nusc,
            config=config_factory(config_name),
            result_path=str(path),
            eval_set=eval_set,
            output_dir=str(out_dir),
            verbose=verbose,
        )
        summary = evaluator.main(plot_examples=plot_examples, render_curves=render_curves)
    return NuScenesMetrics.from_summary(summary, out_dir)


def _check_tokens(got: set[str], want: set[str], eval_set: str, path: Path) -> None:
    missing, extra = sorted(want - got), sorted(got - want)
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} sample(s) of {eval_set!r} have no entry (e.g. {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} sample token(s) are not in {eval_set!r} (e.g. {extra[:3]})")
    raise ValueError(
        f"{path}: the results must cover exactly the {len(want)} samples of {eval_set!r} "
        f"(give samples without detections an empty list): " + "; ".join(parts)
    )


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Swallow the devkit's unconditional prints and progress bars when ``enabled``."""
    if not enabled:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def format_metrics(metrics: NuScenesMetrics) -> str:
    """Markdown: a one-row table of mAP, NDS and the mean TP errors, then a per-class table."""

    def num(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:.4f}"

    short = [TP_SHORT_NAMES[k] for k in TP_METRICS]
    lines = [
        "| mAP | NDS | " + " | ".join("m" + s for s in short) + " |",
        "|" + "---:|" * (2 + len(short)),
        f"| {num(metrics.mean_ap)} | {num(metrics.nd_score)} | "
        + " | ".join(num(metrics.tp_errors[k]) for k in TP_METRICS)
        + " |",
        "",
        "| class | AP | " + " | ".join(short) + " |",
        "|:---|" + "---:|" * (1 + len(short)),
    ]
    for c, ap in metrics.class_aps.items():
        errs = metrics.class_tp_errors[c]
        lines.append(f"| {c} | {num(ap)} | " + " | ".join(num(errs[k]) for k in TP_METRICS) + " |")
    return "\n".join(lines)
