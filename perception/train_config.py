"""Typed ``train:`` section of an experiment config (optimiser, schedule, loop, checkpoints, augmentation).

The section is a frozen pydantic model with unknown keys forbidden, built from the shared strict types of
:mod:`perception.config_types` like every other config class. It lives in the config layer (torch-free) so that
:mod:`perception.config_schema` imports it without reaching up into :mod:`perception.engine`, which reads it.
Every field can be overridden from the command line (``--set train.optimizer.lr=0.002``) and the ``tools/train.py``
flags ``--batch-size / --epochs / --workers / --amp / --seed / --deterministic`` override the matching keys.

Learning rate and batch size (stated explicitly, and logged at start-up):

* ``batch_size`` is **per process** (per GPU). The global batch is ``batch_size * world_size``.
* ``optimizer.lr`` is the one-cycle peak LR for the global batch ``lr_reference_batch``. With ``lr_scaling:
  linear`` the LR used is ``lr * global_batch / lr_reference_batch`` (Goyal et al.); with ``none`` (default)
  ``lr`` is used as written, whatever the number of processes.

The schedule follows OpenPCDet's ``adam_onecycle``: over the first ``pct_start`` of all iterations the LR rises
from ``lr / div_factor`` to ``lr`` along a cosine while Adam's ``beta1`` falls from ``moms[0]`` to ``moms[1]``; then
the LR falls along a cosine to ``lr / div_factor / final_div_factor`` while ``beta1`` climbs back to ``moms[0]``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from perception.config_types import (
    Bool,
    Float,
    NonNegFloat,
    NonNegInt,
    PosInt,
    PositiveFloat,
    Probability,
    Str,
    StrictSection,
)

__all__ = [
    "AugmentConfig",
    "GTSamplingConfig",
    "ImageAugmentConfig",
    "ViewDropoutConfig",
    "OneCycleConfig",
    "OptimizerConfig",
    "TrainConfig",
]


class OptimizerConfig(StrictSection):
    """AdamW (decoupled weight decay).

    Attributes:
        lr: peak learning rate of the one-cycle schedule, for a global batch of ``lr_reference_batch``.
        weight_decay: decoupled weight decay (OpenPCDet: 0.01), applied to every parameter.
        betas: Adam ``(beta1, beta2)``; ``beta1`` is overwritten by the momentum cycle of the schedule.
        eps: Adam epsilon.
    """

    lr: PositiveFloat = 3e-3
    weight_decay: NonNegFloat = 0.01
    betas: tuple[Probability, Probability] = (0.9, 0.99)
    eps: PositiveFloat = 1e-8


class OneCycleConfig(StrictSection):
    """One-cycle LR / momentum schedule (OpenPCDet ``adam_onecycle`` semantics, see the module docstring).

    Attributes:
        div_factor: start LR is ``lr / div_factor``.
        pct_start: fraction of all iterations spent rising, in ``(0, 1)``.
        moms: ``(high, low)`` values of Adam's ``beta1``: high at the start and end, low at the LR peak.
        final_div_factor: the last LR is ``lr / div_factor / final_div_factor``.
    """

    div_factor: PositiveFloat = 10.0
    pct_start: Annotated[Float, Field(gt=0, lt=1)] = 0.4
    moms: tuple[Probability, Probability] = (0.95, 0.85)
    final_div_factor: PositiveFloat = 1e4


class GTSamplingConfig(StrictSection):
    """Ground-truth sampling (copy-paste) from the train GT database built by ``tools/create_data.py``.

    Attributes:
        sample_counts: class name -> objects of that class per scene after pasting (present + pasted).
        min_points: class name -> minimum LiDAR points of a pasted object.
        fade_last_epochs: switch GT sampling off for the last N epochs (0: never), as TransFusion trains.
        remove_extra_width: metres added to ``dx, dy, dz`` when removing scene points under a pasted box.
    """

    sample_counts: dict[Str, NonNegInt]
    min_points: dict[Str, NonNegInt] = Field(default_factory=dict)
    fade_last_epochs: NonNegInt = 0
    remove_extra_width: tuple[Float, Float, Float] = (0.0, 0.0, 0.0)


#: A probability that may be 1 (always).
UnitInterval = Annotated[Float, Field(ge=0.0, le=1.0)]


class ImageAugmentConfig(StrictSection):
    """Camera image augmentation (``train.augment.image``; with ``data.use_cameras: true``), per view, folded
    into the camera rig (``perception.datasets.image_transforms.ImageAugment``).

    Attributes:
        resize: ``(min, max)`` factors of a random resize of the loaded network-size image (i.e. around
            ``data.images.scale``), then cropped back to ``data.images.size``; ``(1, 1)``: off.
        random_crop: the horizontal crop position is random (else centred); rows are always cut from the top.
        flip: probability of a horizontal flip (a mirrored virtual camera, see ``CameraBatch``).
    """

    resize: tuple[PositiveFloat, PositiveFloat] = (1.0, 1.0)
    random_crop: Bool = True
    flip: UnitInterval = 0.5

    @model_validator(mode="after")
    def _check(self) -> ImageAugmentConfig:
        if self.resize[0] > self.resize[1]:
            raise ValueError(f"resize: min ({self.resize[0]}) must be <= max ({self.resize[1]})")
        return self


class ViewDropoutConfig(StrictSection):
    """Training-time camera view dropout (``train.augment.view_dropout``): dropped views are marked invalid and
    their images zeroed, as a missing camera at inference.

    Attributes:
        probability: each view dropped independently with this probability.
        all_probability: every view of the sample dropped at once with this probability (LiDAR-only samples).
    """

    probability: UnitInterval = 0.0
    all_probability: UnitInterval = 0.0


class AugmentConfig(StrictSection):
    """Training-time augmentation, applied in this order: GT sampling, flip, rotation, scaling, translation,
    image augmentation, view dropout (the 3D and the image transforms compose in any order; this one is fixed).

    Attributes:
        gt_sampling: copy-paste augmentation; None: off.
        flip_x: random flip along the x axis (``y -> -y``) with probability 0.5.
        flip_y: random flip along the y axis (``x -> -x``) with probability 0.5.
        rotation: ``(min, max)`` radians of a global rotation about +z; None: off.
        scaling: ``(min, max)`` global scale factors (> 0); None: off.
        translation_std: ``(sx, sy, sz)`` metres, std of a global Gaussian translation; None: off.
        image: camera image resize / crop / flip (:class:`ImageAugmentConfig`); None: off.
        view_dropout: camera view dropout (:class:`ViewDropoutConfig`); None: off.
    """

    gt_sampling: GTSamplingConfig | None = None
    flip_x: Bool = False
    flip_y: Bool = False
    rotation: tuple[Float, Float] | None = None
    scaling: tuple[PositiveFloat, PositiveFloat] | None = None
    translation_std: tuple[Float, Float, Float] | None = None
    image: ImageAugmentConfig | None = None
    view_dropout: ViewDropoutConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> AugmentConfig:
        for name in ("rotation", "scaling"):
            r = getattr(self, name)
            if r is not None and r[0] > r[1]:
                raise ValueError(f"{name}: min ({r[0]}) must be <= max ({r[1]})")
        if self.translation_std is not None and min(self.translation_std) < 0:
            raise ValueError(f"translation_std must be >= 0, got {self.translation_std}")
        return self


class TrainConfig(StrictSection):
    """How to train (``train:`` section of an experiment config).

    Attributes:
        batch_size: samples per process (per GPU) and step.
        epochs: passes over the (possibly class-balanced) training set.
        workers: ``DataLoader`` worker processes per training process (0: load in the main process).
        optimizer: AdamW settings.
        schedule: one-cycle settings.
        lr_scaling: ``none`` or ``linear`` (see the module docstring).
        lr_reference_batch: global batch size ``optimizer.lr`` is meant for (used by ``lr_scaling: linear``).
        grad_clip_norm: clip the global gradient L2 norm to this value; None: no clipping.
        amp: mixed precision: bf16 autocast on CPU, fp16 autocast + grad scaler on GPU.
        seed: seed of every random generator (per rank: ``seed + rank`` for Python / numpy / torch).
        deterministic: deterministic algorithms (``torch.use_deterministic_algorithms``), no cuDNN autotuning;
            on the CPU, runs with the same settings and thread count give bit-identical weights.
        keep_last: checkpoints kept in ``ckpt/`` (older ones are deleted).
        ckpt_interval: save a checkpoint every N epochs (and always after the last one).
        eval_interval: evaluate on the validation split every N epochs; 0: only when ``tools/test.py`` runs.
        log_interval: iterations between console / TensorBoard scalar logs.
        cbgs: class-balanced grouping and sampling of the training set (CenterPoint's CBGS).
        min_points_in_gt: drop training boxes with fewer LiDAR points.
        augment: training-time augmentation.
        split: training split name (nuScenes: ``mini_train`` / ``train``, default by version; KITTI: ``train``).
        val_split: evaluation split name (nuScenes: ``mini_val`` / ``val``; KITTI: ``val``).
    """

    batch_size: PosInt = 4
    epochs: PosInt = 20
    workers: NonNegInt = 0
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: OneCycleConfig = OneCycleConfig()
    lr_scaling: Literal["none", "linear"] = "none"
    lr_reference_batch: PosInt = 16
    grad_clip_norm: PositiveFloat | None = 10.0
    amp: Bool = False
    seed: NonNegInt = 0
    deterministic: Bool = False
    keep_last: PosInt = 5
    ckpt_interval: PosInt = 1
    eval_interval: NonNegInt = 0
    log_interval: PosInt = 10
    cbgs: Bool = False
    min_points_in_gt: NonNegInt = 0
    augment: AugmentConfig = AugmentConfig()
    split: Str | None = None
    val_split: Str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        gts = self.augment.gt_sampling
        if gts is not None and gts.fade_last_epochs > self.epochs:
            raise ValueError(
                f"augment.gt_sampling.fade_last_epochs ({gts.fade_last_epochs}) must be <= epochs ({self.epochs})"
            )
        return self
