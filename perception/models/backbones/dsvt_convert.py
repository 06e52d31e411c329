"""Convert DSVT weights between the authors' checkpoint layout (OpenPCDet ``DSVT``) and :class:`.dsvt.DSVTBackbone`.

Key mapping (``s`` stage, ``b`` block, ``i`` layer / their "shift" index):

====================================================================  ==============================================
authors (``backbone_3d.`` prefix in a detector checkpoint)            ours
====================================================================  ==============================================
``input_layer.posembed_layers.s.b.i.position_embedding_head.{0,1,3}``  ``input_layer.pos_embeds.s.b.i.{linear1,norm,linear2}``
``stage_s.b.encoder_list.i.win_attn.self_attn.in_proj_{weight,bias}``  ``stages.s.b.layers.i.in_proj.{weight,bias}``
``stage_s.b.encoder_list.i.win_attn.self_attn.out_proj.*``             ``stages.s.b.layers.i.out_proj.*``
``stage_s.b.encoder_list.i.win_attn.{linear1,linear2}.*``              ``stages.s.b.layers.i.{linear1,linear2}.*``
``stage_s.b.encoder_list.i.win_attn.{norm1,norm2}.*``                  ``stages.s.b.layers.i.{norm_attn,norm_ffn}.*``
``stage_s.b.encoder_list.i.norm.*``                                    ``stages.s.b.layers.i.norm_out.*``
``residual_norm_stage_s.b.*``                                          ``stages.s.b.norm_out.*``
``stage_s_reduction.pos_embedding``                                    ``poolings.s.slot_embed``
``stage_s_reduction.self_attn.in_proj_{weight,bias}``                  ``poolings.s.in_proj.{weight,bias}``
``stage_s_reduction.self_attn.out_proj.*`` / ``.norm.*``               ``poolings.s.out_proj.*`` / ``.norm.*``
====================================================================  ==============================================

Tensors are copied unchanged (same shapes and meaning). To reproduce the authors' outputs, build the backbone with
``authors_pos_embed=True`` and ``pool_mask_empty=False`` (what :func:`.dsvt_presets.dsvt_config_from_authors`
gives).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import torch

_P = r"(?P<s>\d+)"
_RULES: list[tuple[str, str]] = [
    (
        rf"input_layer\.posembed_layers\.{_P}\.(?P<b>\d+)\.(?P<i>\d+)\.position_embedding_head\.(?P<m>[013])\.(?P<t>\w+)",
        "input_layer.pos_embeds.{s}.{b}.{i}.{m}.{t}",
    ),
    (
        rf"stage_{_P}\.(?P<b>\d+)\.encoder_list\.(?P<i>\d+)\.win_attn\.self_attn\.in_proj_(?P<t>weight|bias)",
        "stages.{s}.{b}.layers.{i}.in_proj.{t}",
    ),
    (
        rf"stage_{_P}\.(?P<b>\d+)\.encoder_list\.(?P<i>\d+)\.win_attn\.self_attn\.out_proj\.(?P<t>weight|bias)",
        "stages.{s}.{b}.layers.{i}.out_proj.{t}",
    ),
    (
        rf"stage_{_P}\.(?P<b>\d+)\.encoder_list\.(?P<i>\d+)\.win_attn\.(?P<m>linear1|linear2|norm1|norm2)"
        r"\.(?P<t>weight|bias)",
        "stages.{s}.{b}.layers.{i}.{m}.{t}",
    ),
    (
        rf"stage_{_P}\.(?P<b>\d+)\.encoder_list\.(?P<i>\d+)\.norm\.(?P<t>weight|bias)",
        "stages.{s}.{b}.layers.{i}.norm_out.{t}",
    ),
    (rf"residual_norm_stage_{_P}\.(?P<b>\d+)\.(?P<t>weight|bias)", "stages.{s}.{b}.norm_out.{t}"),
    (rf"stage_{_P}_reduction\.pos_embedding", "poolings.{s}.slot_embed"),
    (rf"stage_{_P}_reduction\.self_attn\.in_proj_(?P<t>weight|bias)", "poolings.{s}.in_proj.{t}"),
    (rf"stage_{_P}_reduction\.self_attn\.out_proj\.(?P<t>weight|bias)", "poolings.{s}.out_proj.{t}"),
    (rf"stage_{_P}_reduction\.norm\.(?P<t>weight|bias)", "poolings.{s}.norm.{t}"),
]
_MODULE_NAMES = {"0": "linear1", "1": "norm", "3": "linear2", "norm1": "norm_attn", "norm2": "norm_ffn"}
_MODULE_NAMES.update(linear1="linear1", linear2="linear2")
_COMPILED = [(re.compile(pattern + r"\Z"), target) for pattern, target in _RULES]

# Inverse rules (ours -> theirs), derived by hand from the table above.
_INVERSE: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (
        rf"input_layer\.pos_embeds\.{_P}\.(?P<b>\d+)\.(?P<i>\d+)\.(?P<m>linear1|norm|linear2)\.(?P<t>\w+)",
        lambda m: "input_layer.posembed_layers.{s}.{b}.{i}.position_embedding_head.{n}.{t}".format(
            n={"linear1": "0", "norm": "1", "linear2": "3"}[m["m"]], **m.groupdict()
        ),
    ),
    (
        rf"stages\.{_P}\.(?P<b>\d+)\.layers\.(?P<i>\d+)\.in_proj\.(?P<t>weight|bias)",
        lambda m: "stage_{s}.{b}.encoder_list.{i}.win_attn.self_attn.in_proj_{t}".format(**m.groupdict()),
    ),
    (
        rf"stages\.{_P}\.(?P<b>\d+)\.layers\.(?P<i>\d+)\.out_proj\.(?P<t>weight|bias)",
        lambda m: "stage_{s}.{b}.encoder_list.{i}.win_attn.self_attn.out_proj.{t}".format(**m.groupdict()),
    ),
    (
        rf"stages\.{_P}\.(?P<b>\d+)\.layers\.(?P<i>\d+)\.(?P<m>linear1|linear2|norm_attn|norm_ffn)\.(?P<t>weight|bias)",
        lambda m: "stage_{s}.{b}.encoder_list.{i}.win_attn.{n}.{t}".format(
            n={"norm_attn": "norm1", "norm_ffn": "norm2"}.get(m["m"], m["m"]), **m.groupdict()
        ),
    ),
    (
        rf"stages\.{_P}\.(?P<b>\d+)\.layers\.(?P<i>\d+)\.norm_out\.(?P<t>weight|bias)",
        lambda m: "stage_{s}.{b}.encoder_list.{i}.norm.{t}".format(**m.groupdict()),
    ),
    (
        rf"stages\.{_P}\.(?P<b>\d+)\.norm_out\.(?P<t>weight|bias)",
        lambda m: "residual_norm_stage_{s}.{b}.{t}".format(**m.groupdict()),
    ),
    (rf"poolings\.{_P}\.slot_embed", lambda m: "stage_{s}_reduction.pos_embedding".format(**m.groupdict())),
    (
        rf"poolings\.{_P}\.in_proj\.(?P<t>weight|bias)",
        lambda m: "stage_{s}_reduction.self_attn.in_proj_{t}".format(**m.groupdict()),
    ),
    (
        rf"poolings\.{_P}\.(?P<m>out_proj|norm)\.(?P<t>weight|bias)",
        lambda m: "stage_{s}_reduction.{n}.{t}".format(
            n="self_attn.out_proj" if m["m"] == "out_proj" else "norm", **m.groupdict()
        ),
    ),
]
_INVERSE_COMPILED = [(re.compile(pattern + r"\Z"), fn) for pattern, fn in _INVERSE]


def authors_key_to_ours(key: str) -> str:
    """Our parameter / buffer name for one of the authors' backbone keys (without a ``backbone_3d.`` prefix).

    Raises:
        KeyError: the key is not part of the authors' DSVT backbone (or uses a reduction other than attention).
    """
    for pattern, target in _COMPILED:
        m = pattern.match(key)
        if m:
            groups = m.groupdict()
            if "m" in groups:
                groups["m"] = _MODULE_NAMES[groups["m"]]
            return target.format(**groups)
    raise KeyError(f"unknown DSVT key {key!r} (not a DSVT backbone parameter in the authors' layout)")


def convert_authors_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = "backbone_3d."
) -> dict[str, torch.Tensor]:
    """Convert the authors' DSVT weights to our :class:`.dsvt.DSVTBackbone` layout.

    Args:
        state_dict: the authors' ``model_state`` (a whole detector: only keys under ``prefix`` are taken) or the
            backbone's own state dict (no key starts with ``prefix``: every key must be a DSVT key).
        prefix: the backbone's prefix in a detector state dict.

    Returns:
        ``{our_key: tensor}``, ready for ``DSVTBackbone.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: a key that is not a DSVT backbone key, or no DSVT key at all.
        TypeError: a value that is not a tensor.
    """
    items = dict(state_dict)
    if prefix and any(k.startswith(prefix) for k in items):
        items = {k[len(prefix) :]: v for k, v in items.items() if k.startswith(prefix)}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in items.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] must be a tensor, got {type(value).__name__}")
        try:
            out[authors_key_to_ours(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys are not DSVT backbone keys in the authors' layout: {unknown[:5]}"
        )
    if not out:
        raise ValueError("state_dict holds no DSVT backbone weights")
    return out


def to_authors_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_authors_state_dict`: our backbone weights in the authors' layout (+ ``prefix``).

    Raises:
        ValueError: a key that is not one of our DSVT backbone keys.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for pattern, fn in _INVERSE_COMPILED:
            m = pattern.match(key)
            if m:
                out[prefix + fn(m)] = value
                break
        else:
            raise ValueError(f"unknown key {key!r} (not a DSVTBackbone parameter or buffer)")
    return out


def load_authors_checkpoint(
    path: str | os.PathLike[str], *, prefix: str = "backbone_3d."
) -> dict[str, torch.Tensor]:
    """Read an authors' checkpoint file (``{"model_state": ...}`` or a bare state dict) and convert it.

    Loaded with ``weights_only=True`` on the CPU.
    """
    ckpt = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"{os.fspath(path)}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = ckpt.get("model_state", ckpt)
    return convert_authors_state_dict(state, prefix=prefix)


__all__ = [
    "authors_key_to_ours",
    "convert_authors_state_dict",
    "load_authors_checkpoint",
    "to_authors_state_dict",
]
