"""Training checkpoints: atomic writes, keep-last-K, and auto-resume that skips corrupt files.

A checkpoint is a :class:`CheckpointState` (the one typed description of what a checkpoint holds), saved as
``torch.save(state.to_dict())`` -- a plain dict, loadable with ``torch.load(..., weights_only=True)`` -- and read
back with :meth:`CheckpointState.from_dict`, which checks the version, the keys and their types and names the
file. Trainer, ``tools/test.py``, the demo and inference all go through it (:func:`load_checkpoint`,
:func:`load_model_weights`); nothing else indexes a loaded checkpoint. The dict's keys:

=================  ===========================================================================================
``format_version``  :data:`FORMAT_VERSION` (int)
``model``           model ``state_dict`` (the bare model, never a ``DistributedDataParallel`` wrapper)
``optimizer``       optimiser ``state_dict``
``scheduler``       :class:`~perception.engine.optim.OneCycleSchedule` ``state_dict``
``grad_scaler``     ``torch.amp.GradScaler`` ``state_dict`` (``{}`` when no scaler is used)
``epoch``           completed epochs (int)
``iter_in_epoch``   iterations done in the next, unfinished epoch (0 at an epoch boundary)
``iteration``       global iterations done (int)
``rng``             per-rank generator states: a list indexed by rank (see :func:`rng_to_plain`)
``config``          resolved experiment config, :func:`perception.config.config_to_dict` (absolute paths)
``class_names``     the detector's class list
``world_size``      processes that wrote it
=================  ===========================================================================================

Weights from elsewhere: :func:`load_model_weights` also reads a bare ``state_dict`` file; an OpenPCDet-style file
(a ``model_state`` entry) is refused with the ``tools/convert_checkpoint.py`` command that converts it
(:data:`CONVERT_COMMAND`), since its key names differ from ours and only a conversion that knows the model can map
them. ``--pretrained`` (``strict=False``) loads what fits and stops when less than ``min_share`` of the model's
``state_dict`` entries (parameters and buffers) fit (:class:`WeightMatch` gives counts that add up).

Older files: every checkpoint written so far (the shipped ``checkpoints/demo_detector.pth`` included) is
``format_version`` 1 with exactly these keys; a file without ``world_size`` reads as one process. Any other key
is refused (:class:`CheckpointError` naming it), as unknown config keys are.

File names in ``ckpt/``: ``checkpoint_epoch_<E>.pth`` after ``E`` completed epochs, and
``checkpoint_epoch_<E>_iter_<J>.pth`` for a run stopped ``J`` iterations into epoch ``E + 1``. Newest = largest
``(E, J)``. Writes go to a hidden temporary file in the same folder, are flushed and ``fsync``-ed, then renamed
over the target (``os.replace``, atomic on POSIX), and the folder is ``fsync``-ed: a crash mid-write leaves the
previous checkpoints intact and at most a stale temporary file, which :class:`CheckpointManager` removes.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception.io_atomic import atomic_write

__all__ = [
    "CONVERT_COMMAND",
    "DEFAULT_MIN_SHARE",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointState",
    "LoadedWeights",
    "WeightMatch",
    "CheckpointManager",
    "atomic_torch_save",
    "load_checkpoint",
    "load_model_weights",
    "load_torch_dict",
    "rng_from_plain",
    "rng_to_plain",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "model",
    "optimizer",
    "scheduler",
    "grad_scaler",
    "epoch",
    "iter_in_epoch",
    "iteration",
    "rng",
    "config",
    "class_names",
)
_NAME_RE = re.compile(r"checkpoint_epoch_(\d+)(?:_iter_(\d+))?\.pth\Z")
_TMP_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A file is not a loadable checkpoint of this format (truncated, wrong version, missing / unknown keys,
    a value of the wrong type)."""


_INT_KEYS = ("epoch", "iter_in_epoch", "iteration")
_DICT_KEYS = ("model", "optimizer", "scheduler", "grad_scaler")
_RNG_KEYS = frozenset({"python", "numpy", "torch"})


@dataclass
class CheckpointState:
    """Everything a training checkpoint holds (see the module docstring for the saved layout).

    Attributes:
        model: the bare model's ``state_dict`` (CPU tensors).
        optimizer / scheduler / grad_scaler: their ``state_dict`` (``grad_scaler`` is ``{}`` without a scaler).
        epoch: completed epochs; iter_in_epoch: iterations done in the next epoch; iteration: global iterations.
        rng: per-rank generator states (:func:`rng_to_plain`), indexed by rank.
        config: the resolved experiment config as a plain dict (:func:`perception.config.config_to_dict`), or None.
        class_names: the detector's classes, in label order.
        world_size: processes that wrote it.
    """

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    grad_scaler: dict[str, Any]
    epoch: int
    iter_in_epoch: int
    iteration: int
    rng: list[Any]
    config: dict[str, Any] | None
    class_names: tuple[str, ...] = ()
    world_size: int = 1
    format_version: int = field(default=FORMAT_VERSION, init=False)

    def to_dict(self) -> dict[str, Any]:
        """The plain dict that is saved (only tensors, numbers, strings, lists and dicts: ``weights_only``-safe)."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "grad_scaler": self.grad_scaler,
            "epoch": int(self.epoch),
            "iter_in_epoch": int(self.iter_in_epoch),
            "iteration": int(self.iteration),
            "rng": list(self.rng),
            "config": self.config,
            "class_names": list(self.class_names),
            "world_size": int(self.world_size),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> CheckpointState:
        """Check and read a loaded checkpoint dict.

        Raises:
            CheckpointError: not a dict, another ``format_version``, missing keys, or a value of the wrong type;
                the message starts with ``source`` (the file).
        """
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a dict, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{source}: format_version {version!r}, this code reads {FORMAT_VERSION}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise CheckpointError(f"{source}: missing keys {missing}")
        unknown = sorted(str(k) for k in data if k not in (*REQUIRED_KEYS, "world_size"))
        if unknown:
            raise CheckpointError(
                f"{source}: unknown keys {unknown} (format_version {FORMAT_VERSION} has none)"
            )
        for key in _DICT_KEYS:
            if not isinstance(data[key], dict):
                raise CheckpointError(f"{source}: {key!r} must be a dict, got {type(data[key]).__name__}")
        bad = [
            k for k, v in data["model"].items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
        ]
        if bad:
            raise CheckpointError(f"{source}: 'model' must map names to tensors; bad entries {bad[:5]}")
        for key in (*_INT_KEYS, "world_size"):
            value = data.get(key, 1)
            low = 1 if key == "world_size" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CheckpointError(f"{source}: {key!r} must be an int >= {low}, got {value!r}")
        rng = data["rng"]
        if not isinstance(rng, list) or not all(isinstance(r, dict) and _RNG_KEYS <= r.keys() for r in rng):
            raise CheckpointError(
                f"{source}: 'rng' must be a list of per-rank generator states (dicts with keys "
                f"{sorted(_RNG_KEYS)}), got {rng!r:.80}"
            )
        if data["config"] is not None and not isinstance(data["config"], dict):
            raise CheckpointError(f"{source}: 'config' must be a dict or None")
        names = data["class_names"]
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{source}: 'class_names' must be a list of strings, got {names!r:.80}")
        return cls(
            model=data["model"],
            optimizer=data["optimizer"],
            scheduler=data["scheduler"],
            grad_scaler=data["grad_scaler"],
            epoch=data["epoch"],
            iter_in_epoch=data["iter_in_epoch"],
            iteration=data["iteration"],
            rng=data["rng"],
            config=data["config"],
            class_names=tuple(names),
            world_size=data.get("world_size", 1),
        )


@dataclass(frozen=True)
class LoadedWeights:
    """What :func:`load_model_weights` read: the checkpoint (None for a bare ``state_dict`` file) and its path.

    Attributes:
        path: the file.
        checkpoint: the whole training checkpoint, or None when the file held only a ``state_dict``.
        match: how its tensors met the model's (:class:`WeightMatch`), or None.
    """

    path: Path
    checkpoint: CheckpointState | None
    match: WeightMatch | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes the weights were trained for (``()`` when the file does not say)."""
        return self.checkpoint.class_names if self.checkpoint is not None else ()

    def check_class_names(self, class_names: tuple[str, ...] | list[str]) -> None:
        """Raise ``ValueError`` when the file names classes and they differ from ``class_names``."""
        saved = self.class_names
        if saved and tuple(saved) != tuple(class_names):
            raise ValueError(
                f"{self.path} was trained on classes {list(saved)}, the config has {list(class_names)}"
            )


def rng_to_plain(state: Mapping[str, Any]) -> dict[str, Any]:
    """Generator states from :func:`perception.engine.rng.capture_rng_state` as tensors / lists / ints only,
    so the checkpoint loads with ``weights_only=True`` (no pickled numpy objects)."""
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    out: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": state["torch"].clone(),
    }
    if "cuda" in state:
        out["cuda"] = [s.clone() for s in state["cuda"]]
    return out


def rng_from_plain(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`rng_to_plain`."""
    version, internal, gauss = plain["python"]
    name, keys, pos, has_gauss, cached = plain["numpy"]
    out: dict[str, Any] = {
        "python": (int(version), tuple(int(v) for v in internal), gauss),
        "numpy": (str(name), keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)),
        "torch": plain["torch"],
    }
    if "cuda" in plain:
        out["cuda"] = list(plain["cuda"])
    return out


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)`` atomically (:func:`perception.io_atomic.atomic_write`: temporary file in the same
    folder named ``.tmp-<name>.*``, ``fsync``, ``os.replace``, folder ``fsync``).

    On any error the temporary file is removed and the error re-raised; an existing ``path`` is untouched.
    """
    return atomic_write(Path(path).absolute(), lambda f: torch.save(obj, f), tmp_prefix=_TMP_PREFIX)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> CheckpointState:
    """Load and check a training checkpoint (``weights_only=True``: no arbitrary code runs).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is truncated / not a torch file, of another format version, or lacks keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError / EOFError / UnpicklingError for damaged files
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    return CheckpointState.from_dict(state, str(path))


DEFAULT_MIN_SHARE = 0.5
"""``--pretrained`` default: at least this share of the model's tensors must load, else :class:`CheckpointError`."""

CONVERT_COMMAND = (
    "python tools/convert_checkpoint.py --from openpcdet {path} --config CONFIG --out converted.pth"
)
"""What to run on an OpenPCDet / DSVT-authors checkpoint (``--from dsvt-authors`` for the latter)."""

_SHOW = 5


def _some(names: list[str]) -> str:
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return f"{names[:_SHOW]}{more}"


@dataclass(frozen=True)
class WeightMatch:
    """How a file's tensors meet a model's ``state_dict`` (parameters and persistent buffers, BatchNorm running
    statistics and ``num_batches_tracked`` included).

    ``len(loaded) + len(missing) + len(shape_mismatch) == total``; ``unexpected`` (file entries the model has no
    place for) are counted apart.

    Attributes:
        total: the model's ``state_dict`` entries; ``parameters`` of them are parameters, the rest buffers.
        loaded: keys whose name and shape fit; missing: model keys the file lacks; shape_mismatch: ``"key
        (file shape) vs (model shape)"`` of keys in both with another shape; unexpected: file keys not in the model.
    """

    total: int
    parameters: int
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    unexpected: tuple[str, ...]

    @classmethod
    def of(cls, model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> WeightMatch:
        own = model.state_dict()
        fit = [k for k in own if k in weights and weights[k].shape == own[k].shape]
        bad = [
            f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}"
            for k in own
            if k in weights and weights[k].shape != own[k].shape
        ]
        return cls(
            total=len(own),
            parameters=sum(1 for _ in model.parameters()),
            loaded=tuple(fit),
            missing=tuple(k for k in own if k not in weights),
            shape_mismatch=tuple(bad),
            unexpected=tuple(sorted(k for k in weights if k not in own)),
        )

    @property
    def share(self) -> float:
        """``len(loaded) / total`` (1.0 for a model without tensors)."""
        return len(self.loaded) / self.total if self.total else 1.0

    def summary(self) -> str:
        """``"loaded L/N model tensors (P parameters + B buffers): missing M, shape mismatch S; unexpected U"``."""
        return (
            f"loaded {len(self.loaded)}/{self.total} model tensors ({self.parameters} parameters + "
            f"{self.total - self.parameters} buffers, BatchNorm statistics included): missing "
            f"{len(self.missing)}, shape mismatch {len(self.shape_mismatch)}; unexpected in the file "
            f"{len(self.unexpected)}"
        )

    def details(self) -> str:
        """A few names of each kind that did not match."""
        parts = [
            f"{name} {_some(list(keys))}"
            for name, keys in (
                ("missing", self.missing),
                ("shape mismatch", self.shape_mismatch),
                ("unexpected", self.unexpected),
            )
            if keys
        ]
        return "; ".join(parts)


def _weights_of(data: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], CheckpointState | None]:
    """The model weights in a loaded file: a checkpoint of ours, or a bare ``state_dict``; others refused."""
    if "format_version" in data:
        checkpoint = CheckpointState.from_dict(data, str(path))
        return checkpoint.model, checkpoint
    if "model_state" in data:
        raise CheckpointError(
            f"{path} is an OpenPCDet-style checkpoint (a 'model_state' entry): its key names differ from ours; "
            f"convert it first: {CONVERT_COMMAND.format(path=path)}"
        )
    not_tensors = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{path}: neither a checkpoint of this project (no 'format_version') nor a state_dict (entries "
            f"{_some(not_tensors)} are not tensors)"
        )
    return data, None


def load_torch_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A torch file holding a dict, read with ``weights_only=True`` (no pickled code runs) onto the CPU.

    Raises:
        FileNotFoundError: no such file. CheckpointError: not a torch file (truncated, another format) or not a
            dict; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(data).__name__}")
    return data


def load_model_weights(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool = True,
    min_share: float | None = None,
) -> LoadedWeights:
    """Load the ``model`` entry of a checkpoint (or a bare ``state_dict`` file) into ``model``.

    Args:
        strict: require identical keys and shapes. With ``strict=False`` (``--pretrained``) the tensors whose name
            and shape fit are loaded and the rest keep their initial values; one INFO line gives the counts
            (:meth:`WeightMatch.summary`: loaded + missing + shape mismatch = the model's ``state_dict`` entries,
            parameters and buffers; unexpected file entries apart) and names a few that did not match.
        min_share: with ``strict=False``, the least share of the model's ``state_dict`` entries that must load
            (``0 <= min_share <= 1``; None: :data:`DEFAULT_MIN_SHARE`); fewer is a :class:`CheckpointError` and nothing
            is loaded.

    Returns:
        :class:`LoadedWeights`: the checkpoint (checked by :meth:`CheckpointState.from_dict`), or None for a bare
        ``state_dict`` file; ``match`` holds the :class:`WeightMatch`.

    Raises:
        CheckpointError: the file cannot be loaded, is an OpenPCDet checkpoint (the message gives the
            conversion command), is neither our checkpoint nor a state dict, or does not fit ``model`` (``strict``,
            or less than ``min_share`` loads); the message lists a few names of each kind that did not match.
    """
    min_share = DEFAULT_MIN_SHARE if min_share is None else float(min_share)
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share must lie in [0, 1], got {min_share}")
    path = Path(path)
    data = load_torch_dict(path)
    weights, checkpoint = _weights_of(data, path)
    match = WeightMatch.of(model, weights)
    loaded = LoadedWeights(path, checkpoint, match)
    if strict:
        if len(match.loaded) != match.total or match.unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the model: {match.summary()}; {match.details()}"
            )
        model.load_state_dict(weights, strict=True)
        return loaded
    if match.share < min_share:
        raise CheckpointError(
            f"{path}: only {len(match.loaded)} of the model's {match.total} tensors fit "
            f"({match.share:.0%} < --pretrained-min-share {min_share:g}); nothing loaded. {match.summary()}; "
            f"{match.details()}"
        )
    model.load_state_dict({k: weights[k] for k in match.loaded}, strict=False)
    details = match.details()
    logger.info("%s from %s%s", match.summary(), path, f" ({details})" if details else "")
    return loaded


class CheckpointManager:
    """Checkpoints of one run in ``directory``: naming, atomic saving, keep-last-K, auto-resume.

    Args:
        directory: the run's ``ckpt/`` folder (created).
        keep_last: how many of the newest checkpoints to keep, ``>= 1``.
        clean_stale: remove temporary files left by a crash mid-write (only one process should do this).
    """

    def __init__(
        self, directory: str | os.PathLike[str], keep_last: int, *, clean_stale: bool = True
    ) -> None:
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
        self.directory = Path(directory).absolute()
        self.keep_last = keep_last
        self.directory.mkdir(parents=True, exist_ok=True)
        if clean_stale:
            for stale in self.directory.glob(f"{_TMP_PREFIX}*"):
                logger.warning("removing stale temporary checkpoint file %s (a write was interrupted)", stale)
                stale.unlink(missing_ok=True)

    @staticmethod
    def name_for(epoch: int, iter_in_epoch: int = 0) -> str:
        """File name after ``epoch`` completed epochs and ``iter_in_epoch`` iterations of the next one."""
        if epoch < 0 or iter_in_epoch < 0:
            raise ValueError(f"epoch and iter_in_epoch must be >= 0, got {epoch}, {iter_in_epoch}")
        suffix = f"_iter_{iter_in_epoch}" if iter_in_epoch else ""
        return f"checkpoint_epoch_{epoch}{suffix}.pth"

    @staticmethod
    def sort_key(path: Path) -> tuple[int, int] | None:
        """``(epoch, iter_in_epoch)`` parsed from a checkpoint file name; None for other files."""
        m = _NAME_RE.match(path.name)
        return (int(m.group(1)), int(m.group(2) or 0)) if m else None

    def checkpoints(self) -> list[Path]:
        """Checkpoint files in the folder, oldest first."""
        found = [(k, p) for p in self.directory.glob("checkpoint_epoch_*.pth") if (k := self.sort_key(p))]
        return [p for _, p in sorted(found)]

    def save(self, state: CheckpointState) -> Path:
        """Atomically write ``state`` (as :meth:`CheckpointState.to_dict`) and prune to ``keep_last``.

        Raises:
            TypeError: ``state`` is not a :class:`CheckpointState` (checked before anything is written).
        """
        if not isinstance(state, CheckpointState):
            raise TypeError(f"state must be a CheckpointState, got {type(state).__name__}")
        path = atomic_torch_save(
            state.to_dict(), self.directory / self.name_for(state.epoch, state.iter_in_epoch)
        )
        for old in self.checkpoints()[: -self.keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def latest_loadable(
        self, map_location: str | torch.device = "cpu"
    ) -> tuple[Path, CheckpointState] | None:
        """The newest checkpoint that loads and passes :func:`load_checkpoint`'s checks, or None if none does.

        Each newer file that fails to load is reported with a ``UserWarning`` (and in the log) and skipped.
        """
        for path in reversed(self.checkpoints()):
            try:
                return path, load_checkpoint(path, map_location)
            except CheckpointError as exc:
                msg = f"skipping corrupt checkpoint {path}: {exc}"
                logger.warning(msg)
                warnings.warn(msg, stacklevel=2)
        return None
