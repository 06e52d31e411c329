"""Training and inference machinery: optimisation, checkpoints, distributed set-up, logging.

Modules (one concept each):

* :mod:`~perception.engine.optim` -- AdamW and the one-cycle LR / momentum schedule (resumable).
* :mod:`~perception.engine.checkpoint` -- atomic checkpoints, keep-last-K, auto-resume skipping corrupt files.
* :mod:`~perception.engine.rng` -- seeding, deterministic mode, generator-state capture / restore.
* :mod:`~perception.engine.distributed` -- ``torchrun`` / gloo / NCCL set-up, sharded samplers, collectives.
* :mod:`~perception.engine.amp` -- bf16 / fp16 autocast, grad scaler, guarded optimiser steps.
* :mod:`~perception.engine.logger` -- log file + console, tqdm progress, TensorBoard scalars.
* :mod:`~perception.engine.data` -- data sets, augmentation and samplers from an experiment config.
* :mod:`~perception.engine.trainer` -- the training loop (:class:`Trainer`).
* :mod:`~perception.engine.inference` -- inference, detections files, official nuScenes / KITTI evaluation.
* :mod:`~perception.engine.paths` -- the run folder ``<output_root>/<config-stem>/<extra-tag>/``.

The typed ``train:`` config section these read (:class:`~perception.train_config.TrainConfig`) lives in the
config layer, :mod:`perception.train_config`; nothing below ``engine`` imports ``engine``.

``tools/train.py`` and ``tools/test.py`` are thin command lines over these.
"""
