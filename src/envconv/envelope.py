r"""``GaussianEnvelope``: the channel-wise Gaussian envelope as a module (paper eq. (3), (9))."""

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import functional, ops
from . import kernels as EF
from .state_dict import ArchitectureRecord, check_record

__all__ = ["GaussianEnvelope", "EnvelopeRecord", "read_envelope_record", "refuse_torchscript"]


def _check_channels(channels: int) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise TypeError(f"channels must be a positive int, got {type(channels).__name__} {channels!r}")
    if channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels}")
    return channels


class GaussianEnvelope(ArchitectureRecord, nn.Module):
    r"""Channel-wise Gaussian envelope with a learned scale per channel.

    Smooths channel :math:`c` of the input with the separable discrete Gaussian of
    eq. (9), :math:`\mathbf g_{\sigma_c} = \operatorname{softmax}(\{-x^2 / 2\sigma_c^2\}_{x=-r}^{r})`,
    applied along the width and then along the height (eq. (3)):

    .. math::

        \bar X(\cdot, \cdot, c) = \mathbf g_{\sigma_c}(y) * \big(\mathbf g_{\sigma_c}(x) * X(\cdot, \cdot, c)\big),
        \qquad \sigma_c^2 = \operatorname{softplus}(\tilde\sigma_c).

    The trainable parameter is ``raw_sigma`` (:math:`\tilde\sigma`), one per channel,
    or a single one when ``shared=True`` (the paper's "single sigma", Table 1d). The
    paper initialises it at 0, i.e. :math:`\sigma = \sqrt{\log 2} \approx 0.833`.
    With ``per_axis=True`` each channel has a sigma per spatial axis, ``raw_sigma`` of shape
    :math:`(C, n)` (:math:`(1, n)` if shared), in the order of the input's axes: a clip's time
    axis, a spectrogram's frequency axis or a volume's slices learn their own receptive field.

    ``size`` (:math:`k_g`) is a plain attribute, not a parameter: it can be changed
    after training (see :func:`envconv.shrink`, the paper's Table 1e) without touching
    the learned scales. It is one int for every axis or a tuple with one per axis (a clip's
    time axis may need fewer taps than its image axes); ``size`` reads back an int when all are
    equal, :attr:`sizes` always has one per axis. The filtering is the ``envconv::envelope`` operator
    (:func:`envconv.functional.gaussian_envelope`); ``impl`` (``"auto"``) can force one of its
    implementations (:data:`~envconv.ops.dispatch.IMPLS`); every choice gives the same result.
    ``forward(x, stride=s)`` returns the envelope only every ``s`` pixels, as a strided
    1x1 convolution after it reads it.

    The state dict holds ``raw_sigma`` and a record of the architecture, ``_extra_state``
    (int64: format 1, :math:`k_g`, learnable, index in :data:`~envconv.kernels.PADDING_MODES`,
    channels, spatial dims; format 2, for a size per axis, then appends each axis's size and
    holds the largest as :math:`k_g`); loading weights of another size, padding, channel count or
    dimensionality raises instead of changing the output.

    Args:
        channels: number of channels :math:`C`.
        size: envelope size :math:`k_g = 2r + 1` (odd, positive; the paper uses 9), or a tuple
            with one per spatial axis.
        shared: one sigma for all channels instead of one per channel.
        init: initial raw value :math:`\tilde\sigma` (finite).
        learnable: if ``False``, ``raw_sigma`` is a buffer, not a parameter (fixed
            sigma, Table 1h); the forward code path is the same.
        padding_mode: ``"zeros"`` (default, as a convolution pads), ``"reflect"``,
            ``"replicate"`` or ``"circular"``; the spatial size is always kept.
        spatial_dims: 2 (default: images), 1 (sequences, :math:`(N, C, L)`) or 3 (volumes and
            clips, :math:`(N, C, D, H, W)`); the kernel of eq. (9) runs along each axis in turn.
        per_axis: a sigma per channel and spatial axis instead of one per channel.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)` (with ``spatial_dims`` 1 or 3:
          :math:`(N, C, L)` or :math:`(N, C, D, H, W)`, or without :math:`N`).
        - Output: same shape as the input; with ``forward(x, stride=s)``, every ``s``-th position
          of each spatial axis.

    Example:
        >>> GaussianEnvelope(4, size=5, spatial_dims=3)(torch.randn(2, 4, 6, 8, 8)).shape
        torch.Size([2, 4, 6, 8, 8])
        >>> clip = GaussianEnvelope(4, size=5, spatial_dims=3, per_axis=True)  # time, height, width
        >>> clip.raw_sigma.shape, clip.sigma.shape
        (torch.Size([4, 3]), torch.Size([4, 3]))
        >>> GaussianEnvelope(4, size=(3, 9, 9), spatial_dims=3, per_axis=True).kernel1d(0).shape  # 3 taps in time
        torch.Size([4, 3])
        >>> env = GaussianEnvelope(8, size=9)
        >>> env(torch.randn(2, 8, 32, 32)).shape
        torch.Size([2, 8, 32, 32])
        >>> round(float(env.sigma.detach()[0]), 4)  # sqrt(softplus(0)) = sqrt(log 2)
        0.8326
        >>> fixed = GaussianEnvelope.fixed(8, sigma=0.0)  # sigma = 0: the identity
        >>> x = torch.randn(1, 8, 5, 5)
        >>> bool(torch.equal(fixed(x), x))
        True
    """

    raw_sigma: torch.Tensor
    _axis_sizes: Optional[List[int]]  # None: _size on every axis

    def __init__(
        self,
        channels: int,
        size: Union[int, Sequence[int]] = 9,
        *,
        shared: bool = False,
        init: float = 0.0,
        learnable: bool = True,
        padding_mode: str = "zeros",
        spatial_dims: int = 2,
        per_axis: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.channels = _check_channels(channels)
        if spatial_dims not in (1, 2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = int(spatial_dims)
        self.size = size  # validated by the setter
        self.shared = bool(shared)
        self.padding_mode = EF.check_padding_mode(padding_mode)
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise ValueError(f"init (raw sigma) must be a finite number, got {init!r}")
        self.impl = "auto"  # envconv.ops.dispatch decides; "separable" / "full" / "cpp" / "triton" force one
        shape = (1 if shared else channels,) + ((self.spatial_dims,) if per_axis else ())
        raw = torch.full(shape, float(init), device=device, dtype=dtype)
        if learnable:
            self.raw_sigma = nn.Parameter(raw)
        else:
            self.register_buffer("raw_sigma", raw)

    @classmethod
    def fixed(
        cls,
        channels: int,
        sigma: Union[float, Sequence[float], torch.Tensor],
        size: Union[int, Sequence[int]] = 9,
        *,
        padding_mode: str = "zeros",
        spatial_dims: int = 2,
        per_axis: bool = False,
        device=None,
        dtype=None,
    ):
        r"""An envelope with a given, non-trainable sigma (the paper's Table 1h).

        Args:
            channels: number of channels.
            sigma: the scale :math:`\sigma \ge 0` (not its square, not the raw value):
                one number shared by all channels, or one per channel; with ``per_axis``,
                one per spatial axis (shared by the channels) or a :math:`(C, n)` table.
                ``sigma = 0`` is a delta kernel: the identity for finite inputs. Like any
                convolution it multiplies every pixel in the ``k_g x k_g`` window by its tap,
                so an infinite or NaN pixel makes its neighbours NaN (``0 * inf``).
            size: envelope size :math:`k_g` (or one per spatial axis).
            padding_mode: as in the constructor.
            spatial_dims: as in the constructor.
            per_axis: as in the constructor.
            device: where the sigma buffer goes.
            dtype: the sigma buffer's dtype.

        Example:
            >>> blur = GaussianEnvelope.fixed(2, sigma=[0.0, 0.7], size=5)
            >>> x = torch.randn(1, 2, 8, 8)
            >>> torch.equal(blur(x)[:, 0], x[:, 0]), blur.learnable  # sigma 0 is the identity
            (True, False)
            >>> GaussianEnvelope.fixed(2, sigma=[0.5, 1.5, 1.5], spatial_dims=3, per_axis=True).sigma.tolist()
            [[0.5, 1.5, 1.5], [0.5, 1.5, 1.5]]
        """
        raw = EF.raw_from_sigma(sigma)
        if per_axis:
            if raw.dim() == 1 and raw.numel() == spatial_dims:
                raw = raw.reshape(1, spatial_dims)
            if raw.dim() != 2 or raw.shape[0] not in (1, channels) or raw.shape[1] != spatial_dims:
                raise ValueError(f"a per-axis sigma must have {spatial_dims} entries (one per spatial axis) or shape "
                                 f"({channels}, {spatial_dims}), got shape {tuple(raw.shape)}")
        elif raw.dim() > 1 or (raw.dim() == 1 and raw.numel() not in (1, channels)):
            raise ValueError(
                f"sigma must be a number or have {channels} entries (one per channel), "
                f"got shape {tuple(raw.shape)}"
            )
        env = cls(
            channels,
            size,
            shared=raw.dim() > 0 and raw.shape[0] == 1 if per_axis else raw.numel() == 1,
            learnable=False,
            padding_mode=padding_mode,
            spatial_dims=spatial_dims,
            per_axis=per_axis,
            device=device,
            dtype=dtype,
        )
        env.raw_sigma.copy_(raw.reshape(env.raw_sigma.shape))
        return env

    @property
    def size(self) -> Union[int, Tuple[int, ...]]:
        """Envelope size :math:`k_g` (odd, positive): an int, or a tuple with one per spatial axis where they differ."""
        return EF.compact_size(self.sizes)

    @size.setter
    def size(self, value: Union[int, Sequence[int]]) -> None:
        sizes = EF.axis_sizes(value, self.spatial_dims, "size")
        self._size = max(sizes)
        self._axis_sizes = None if len(set(sizes)) == 1 else list(sizes)

    @property
    def sizes(self) -> Tuple[int, ...]:
        """The size :math:`k_g` along each spatial axis."""
        return tuple(self._axis_sizes) if self._axis_sizes is not None else (self._size,) * self.spatial_dims

    @property
    def learnable(self) -> bool:
        """Whether sigma is a trainable parameter."""
        return isinstance(self.raw_sigma, nn.Parameter)

    @property
    def per_axis(self) -> bool:
        """Whether each channel has a sigma per spatial axis (``raw_sigma`` of shape (C, n))."""
        return self.raw_sigma.dim() == 2

    @property
    def sigma2(self) -> torch.Tensor:
        r"""Per-channel :math:`\sigma_c^2 = \operatorname{softplus}(\tilde\sigma_c)`, (C,) or per axis (C, n)."""
        return EF.sigma2_from_raw(self.raw_sigma).expand(self.channels, *self.raw_sigma.shape[1:])

    @property
    def sigma(self) -> torch.Tensor:
        r"""Per-channel :math:`\sigma_c`, :math:`(C,)` or :math:`(C, n)` (differentiable; ``.detach()`` for logging)."""
        return self.sigma2.sqrt()

    def kernel1d(self, axis: int = 0) -> torch.Tensor:
        """The 1-D kernels of eq. (9) along spatial ``axis`` at its current size, shape :math:`(C, k_g)`."""
        raw, size = EF.axis_raw_sigmas(self.raw_sigma, self.spatial_dims)[axis], self.sizes[axis]
        return EF.gaussian_kernel1d(raw, size).expand(self.channels, size)

    def kernel2d(self) -> torch.Tensor:
        """The 2-D envelopes (outer products of the two axes' kernels, for analysis only), :math:`(C, k_h, k_w)`."""
        if self.spatial_dims != 2:
            raise ValueError(f"kernel2d is the envelope of a 2-D input; this one is {self.spatial_dims}-D "
                             f"(kernel1d(axis) gives each axis's kernel)")
        return self.kernel1d(0)[:, :, None] * self.kernel1d(1)[:, None, :]

    def forward(self, x: torch.Tensor, stride: Union[int, Sequence[int]] = 1) -> torch.Tensor:
        """Smooth ``x``; with ``stride > 1`` only at the positions a strided 1x1 conv reads."""
        return functional.gaussian_envelope(x, self.raw_sigma, self.size, self.padding_mode, stride, self.impl,
                                            channels=self.channels, spatial_dims=self.spatial_dims)

    def __prepare_scriptable__(self):
        refuse_torchscript(self)

    def resolve_impl(self, x: torch.Tensor, stride: Union[int, Sequence[int]] = 1) -> str:
        """The implementation that computes this envelope's forward for ``x`` (see :mod:`envconv.ops.dispatch`)."""
        stride = [stride] * self.spatial_dims if isinstance(stride, int) else list(stride)
        return ops.forward_impl(x, self._size, stride, self.padding_mode, self.impl,
                                per_axis=self.per_axis or self._axis_sizes is not None)

    def get_extra_state(self) -> torch.Tensor:
        """The record stored with the weights: ``[1, size, learnable, padding mode index, channels, spatial dims]``.

        A size per axis: ``[2, largest size, ..., spatial dims, size of each axis]``.
        """
        record = [1, self._size, int(self.learnable), EF.PADDING_MODES.index(self.padding_mode), self.channels,
                  self.spatial_dims]
        if self._axis_sizes is not None:
            record = [2, *record[1:], *self._axis_sizes]
        return torch.tensor(record)

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Check a stored record against this envelope (a size, padding or channel mismatch raises ``ValueError``)."""
        size, _, padding, channels, spatial_dims = read_envelope_record(state)
        if spatial_dims != self.spatial_dims:
            raise ValueError(f"the weights are of a {spatial_dims}-D envelope, this one is {self.spatial_dims}-D")
        if channels != self.channels:
            raise ValueError(f"the weights are of an envelope over {channels} channels, this one has {self.channels}")
        if size != self.size:
            raise ValueError(f"the weights are of an envelope of size k_g={size}, this one has k_g={self.size} "
                             f"(envconv.shrink(model, {size}) first, or rebuild with envconv.load_disentangled)")
        if padding != self.padding_mode:
            raise ValueError(f"the weights are of an envelope with padding_mode={padding!r}, this one pads "
                             f"{self.padding_mode!r}")

    def extra_repr(self) -> str:
        mode = ("shared" if self.shared else "per-channel") + (" per-axis" if self.per_axis else "")
        s = f"{self.channels}, size={self.size}, sigma={mode}"
        if not self.learnable:
            s += ", learnable=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.spatial_dims != 2:
            s += f", spatial_dims={self.spatial_dims}"
        return s


def refuse_torchscript(module: nn.Module):
    """Raise for ``torch.jit.script`` (it calls ``__prepare_scriptable__``), naming what works instead."""
    raise RuntimeError(
        f"torch.jit.script does not support envconv's {type(module).__name__} (TorchScript scripting is deprecated "
        f"in PyTorch): use torch.export.export or torch.onnx.export for a graph, torch.jit.trace for a TorchScript "
        f"module, or torch.compile for speed")


class EnvelopeRecord(NamedTuple):
    """What a :class:`GaussianEnvelope`'s state dict records of its architecture (``size``: as the envelope's)."""

    size: Union[int, Tuple[int, ...]]
    learnable: bool
    padding_mode: str
    channels: int
    spatial_dims: int


def read_envelope_record(state: torch.Tensor, key: str = "") -> EnvelopeRecord:
    """The :class:`EnvelopeRecord` of a :class:`GaussianEnvelope`'s stored record (format 1, or 2: a size per axis).

    ``key``: the record's state-dict key, named in the errors.
    """
    what = f"envelope record {key}".rstrip()
    per_axis = isinstance(state, torch.Tensor) and state.dim() == 1 and state.numel() > 6 and bool(state[0] == 2)
    values = check_record(state, state.numel() if per_axis else 6, what, version=2 if per_axis else 1)
    size, learnable, padding, channels, dims = values[:5]
    sizes = values[5:] if per_axis else [size] * max(dims, 1)
    if not 1 <= size <= EF.MAX_SIZE or size % 2 == 0 or learnable not in (0, 1) \
            or not 0 <= padding < len(EF.PADDING_MODES) or channels < 1 or dims not in (1, 2, 3) \
            or len(sizes) != dims or max(sizes) != size or any(k < 1 or k % 2 == 0 for k in sizes):
        raise ValueError(f"{what}: {state.tolist()} is corrupt (size {size}, learnable {learnable}, "
                         f"padding index {padding}, channels {channels}, spatial dims {dims}, sizes {sizes})")
    return EnvelopeRecord(EF.compact_size(sizes), bool(learnable), EF.PADDING_MODES[padding], channels, dims)
