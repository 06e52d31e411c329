"""The strict building blocks every config class is made of (a leaf module: it imports only pydantic).

Every config class of the project -- the experiment schema (:mod:`perception.config_schema`), the model's stages
(:mod:`perception.models.model_config` and the stage modules' own configs), the ``train:`` section
(:mod:`perception.train_config`) -- derives from :class:`StrictSection`: unknown keys are errors, instances are
frozen, and NaN / inf floats are refused. Scalars are strict: ``max_sweeps: "10"`` or ``use_cameras: 1`` are
rejected rather than coerced. A class is both the YAML schema and the object the code that runs reads; there is
no second "runtime" copy.

:class:`OneOf` is a choice section (``vfe: {dynamic_pillar: {...}}``): exactly one field is set.

Paths: fields typed :data:`ConfigPath` resolve against the directory of the config file that wrote them (passed
as ``context={"base_dir": ...}`` to ``model_validate``; :mod:`perception.config` does this), never against the
working directory. After validation they are absolute, normalised :class:`pathlib.Path` objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    model_validator,
)

__all__ = [
    "PATH_MARKER",
    "Bool",
    "ConfigPath",
    "Float",
    "Int",
    "Name",
    "NonNegFloat",
    "NonNegInt",
    "OneOf",
    "PosInt",
    "PositiveFloat",
    "Probability",
    "Range6",
    "Str",
    "StrictSection",
    "validation_message",
]

Float = Annotated[float, Strict()]
"""Strict float: accepts int and float, rejects str and bool."""
PositiveFloat = Annotated[float, Strict(), Field(gt=0)]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
Probability = Annotated[float, Strict(), Field(ge=0.0, lt=1.0)]
"""A dropout-style probability in ``[0, 1)``."""
Int = Annotated[int, Strict()]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict(), Field(min_length=1)]
Name = Str
"""A class or key name (non-empty string)."""
Range6 = tuple[Float, Float, Float, Float, Float, Float]
"""Metres ``(x_min, y_min, z_min, x_max, y_max, z_max)``."""


class StrictSection(BaseModel):
    """Base of every config class: unknown keys forbidden, immutable, no NaN/inf floats."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OneOf(StrictSection):
    """A choice: exactly one of the fields (the class names) is set; its value holds that class's settings."""

    @model_validator(mode="after")
    def _exactly_one(self) -> OneOf:
        chosen = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(chosen) != 1:
            options = ", ".join(type(self).model_fields)
            raise ValueError(f"set exactly one of: {options} (got {chosen or 'none'})")
        return self

    @property
    def name(self) -> str:
        """The chosen key."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def settings(self) -> Any:
        """The chosen key's section."""
        return getattr(self, self.name)


class _PathMarker:
    """Annotation marker that tags a field as a config-relative path (found by ``path_field_keys``)."""

    def __repr__(self) -> str:
        return "ConfigPathMarker"


PATH_MARKER = _PathMarker()


def _reject_empty(value: Any) -> Any:
    """``Path("")`` is ``Path(".")``: refuse empty strings instead of silently meaning "the config folder"."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("path must not be empty (write '.' for the config file's own folder)")
    return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Make ``value`` absolute against ``info.context["base_dir"]`` (the config file's directory)."""
    value = value.expanduser()
    if not value.is_absolute():
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            raise ValueError(
                f"relative path {str(value)!r} needs the config file's directory to resolve against "
                "(pass base_dir=...)"
            )
        value = Path(base_dir) / value
    return Path(os.path.normpath(value))


ConfigPath = Annotated[Path, BeforeValidator(_reject_empty), AfterValidator(_resolve_path), PATH_MARKER]
"""A filesystem path; relative values resolve against the config file's directory. Absolute after loading."""


def validation_message(exc: ValidationError) -> str:
    """One line ``"loc: message; loc: message"`` of a pydantic error (for errors re-raised as ``ValueError``)."""
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
