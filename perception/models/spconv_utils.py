"""The one place that knows spconv's quirks: algorithm by device, precision, and conversion to / from it.

* Algorithm: spconv's default (implicit GEMM, ``ConvAlgo.MaskImplicitGemm``) runs on CUDA only; on the CPU every
  sparse conv must use ``ConvAlgo.Native`` (SETUP.md). :func:`use_conv_algo` sets the algorithm of every spconv
  layer in a module for the device of the input, so models are built once and run on either device. spconv 2.x
  stores weights in one layout (``KRSC``: out, kernel..., in) for every algorithm, so switching is safe.
* Precision: spconv has no bfloat16 kernels (its tensor conversion raises ``KeyError: torch.bfloat16``) and CPU
  autocast would hand it bf16 tensors. :func:`sparse_precision` runs the sparse part in float32 with autocast
  switched off whenever autocast is on for the CPU or asks for bf16; CUDA fp16 autocast (spconv's own supported
  mixed precision) is left as it is.
* Bias at inference: in eval mode spconv fuses the conv bias into its kernel, which exists only for CUDA
  (``bias and act don't support cpu``). :class:`SubMConv3d` / :class:`SparseConv3d` are spconv's layers that add
  the bias after the convolution on the CPU (as spconv does in training); use them instead of spconv's.
* Conversion: :func:`to_spconv` / :func:`from_spconv` between :class:`~perception.structures.SparseFeatures` and
  ``spconv.pytorch.SparseConvTensor`` (same ``[b, z, y, x]`` int32 indices and ``(nz, ny, nx)`` shape).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn

with warnings.catch_warnings():
    # spconv 2.3 decorates its autograd functions with the deprecated torch.cuda.amp API.
    warnings.simplefilter("ignore", FutureWarning)
    import spconv
    import spconv.pytorch as spconv_torch
    from spconv.constants import ALL_WEIGHT_IS_KRSC
    from spconv.pytorch.conv import SparseConvolution

from perception.structures import SparseFeatures

__all__ = [
    "SparseConv3d",
    "SubMConv3d",
    "conv_algo_for",
    "from_spconv",
    "sparse_precision",
    "spconv",
    "spconv_torch",
    "to_spconv",
    "use_conv_algo",
]


class _BiasAfterConvOnCpu(SparseConvolution):
    def forward(
        self, input: spconv_torch.SparseConvTensor, add_input: spconv_torch.SparseConvTensor | None = None
    ) -> spconv_torch.SparseConvTensor:
        # spconv's ``training`` flag only decides whether the bias is fused (inference, CUDA only) or added after
        # the convolution on the paths the CPU runs (Native); the act assertion it guards is for fused activations.
        unfused = self.training or (self.bias is not None and not input.features.is_cuda)
        return self._conv_forward(
            unfused,
            input,
            self.weight,
            self.bias,
            add_input,
            name=self.name,
            sparse_unique_name=self._sparse_unique_name,
            act_type=self.act_type,
            act_alpha=self.act_alpha,
            act_beta=self.act_beta,
        )


class SubMConv3d(_BiasAfterConvOnCpu, spconv_torch.SubMConv3d):
    """``spconv.pytorch.SubMConv3d`` whose bias also works in eval mode on the CPU (same arguments)."""


class SparseConv3d(_BiasAfterConvOnCpu, spconv_torch.SparseConv3d):
    """``spconv.pytorch.SparseConv3d`` whose bias also works in eval mode on the CPU (same arguments)."""


def conv_algo_for(device: torch.device | str) -> spconv.ConvAlgo:
    """``ConvAlgo.Native`` for the CPU, ``ConvAlgo.MaskImplicitGemm`` (spconv's default, fastest) for CUDA."""
    return spconv.ConvAlgo.MaskImplicitGemm if torch.device(device).type == "cuda" else spconv.ConvAlgo.Native


def use_conv_algo(module: nn.Module, device: torch.device | str) -> None:
    """Set the algorithm of every spconv conv layer inside ``module`` for ``device`` (see :func:`conv_algo_for`).

    Cheap (one attribute per layer); call it at the start of a forward pass.
    """
    if not ALL_WEIGHT_IS_KRSC:  # pragma: no cover - spconv < 2.2 stored Native weights in another layout
        raise RuntimeError(
            "this spconv stores weights per algorithm; switching algorithms would corrupt them"
        )
    algo = conv_algo_for(device)
    for m in module.modules():
        if isinstance(m, SparseConvolution) and m.algo != algo:
            m.algo = algo


@contextlib.contextmanager
def sparse_precision(device: torch.device | str) -> Iterator[bool]:
    """Context in which spconv layers run; yields True when the features must be cast to float32 inside.

    Under CPU autocast, or any autocast asking for bf16, autocast is switched off for the block (spconv has no
    bf16 kernels), so sparse convs and their BatchNorms run in float32; otherwise nothing changes.
    """
    dev = torch.device(device).type
    on = torch.is_autocast_enabled(dev)
    if on and (dev == "cpu" or torch.get_autocast_dtype(dev) == torch.bfloat16):
        with torch.autocast(dev, enabled=False):
            yield True
    else:
        yield False


def to_spconv(
    sparse: SparseFeatures, spatial_shape: Sequence[int] | None = None
) -> spconv_torch.SparseConvTensor:
    """Wrap ``sparse`` as an spconv tensor (no copy when features are contiguous).

    Args:
        sparse: features ``(M, C)``, coords int32 ``(M, 4)`` ``[b, z, y, x]``.
        spatial_shape: ``(D, H, W)`` of the spconv grid; defaults to ``sparse.grid_shape``. It may be larger than
            the grid (CenterPoint adds an empty z layer), never smaller.
    """
    if not isinstance(sparse, SparseFeatures):
        raise TypeError(f"sparse must be a SparseFeatures, got {type(sparse).__name__}")
    shape = [int(s) for s in (sparse.grid_shape if spatial_shape is None else spatial_shape)]
    if len(shape) != 3 or any(s < g for s, g in zip(shape, sparse.grid_shape, strict=True)):
        raise ValueError(f"spatial_shape must be 3 sizes >= grid_shape {sparse.grid_shape}, got {shape}")
    return spconv_torch.SparseConvTensor(
        sparse.features.contiguous(), sparse.coords.contiguous(), shape, sparse.batch_size
    )


def from_spconv(tensor: spconv_torch.SparseConvTensor) -> SparseFeatures:
    """Unwrap an spconv tensor: features ``(M, C)``, int32 indices ``(M, 4)``, grid = its spatial shape."""
    indices = tensor.indices
    if indices.dtype != torch.int32:
        indices = indices.to(torch.int32)
    shape = tuple(int(s) for s in tensor.spatial_shape)
    return SparseFeatures(tensor.features, indices, shape, int(tensor.batch_size))  # type: ignore[arg-type]
