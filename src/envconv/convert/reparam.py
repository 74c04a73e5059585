r"""One envelope in front of a re-parameterizable block (RepVGG, MobileOne, LeViT's conv-BN, ...).

Such blocks train with several branches (a :math:`k \times k` and a :math:`1 \times 1` convolution,
BatchNorms, an identity) and, for inference, fold them into one convolution: in place
(``reparameterize()``, ``switch_to_deploy()``) or by returning a new module (``fuse()``),
which is what ``timm.utils.reparameterize_model`` calls. An envelope inside one of the branch
convolutions would be deleted with it. So the envelope of a layer inside such a block goes in
front of the whole block instead: :math:`Y = \mathrm{block}(\mathbf g_\sigma * X)`. Every branch
then sees the same smoothed input (with one sigma per input channel rather than one per branch),
and folding the branches, linear in that input, keeps the envelope and the output exactly.

The block keeps its class (a subclass named ``Envelope<Block>`` is made once per block class,
so ``isinstance`` checks, the block's own methods and its state-dict keys are unchanged; the
envelope adds ``<block>.envelope.*``). ``fuse()`` returns the fused module with the envelope in
front: a :class:`~envconv.DisentangledConv2d` holding the same envelope when the fused module is
a plain convolution.
"""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from ..conv import DisentangledConv2d

__all__ = ["REPARAM_METHODS", "reparameterizable", "envelope_block", "is_envelope_block", "block_of"]

#: Methods by which a block folds its branches for inference (timm's ``reparameterize_model`` calls them).
REPARAM_METHODS = ("fuse", "reparameterize", "switch_to_deploy")

_CLASSES: Dict[type, type] = {}


def reparameterizable(module: nn.Module) -> bool:
    """Whether ``module`` folds itself for inference (has one of :data:`REPARAM_METHODS`)."""
    return any(callable(getattr(module, name, None)) for name in REPARAM_METHODS)


def is_envelope_block(module: nn.Module) -> bool:
    """Whether ``module`` is a block made by :func:`envelope_block`."""
    return type(module) in _CLASSES.values()


def _forward(self, x, *args, **kwargs):
    return self._envconv_base.forward(self, self.envelope(x), *args, **kwargs)


def _fuse(self):
    fused = self._envconv_base.fuse(self)
    if type(fused) is nn.Conv2d:
        conv = DisentangledConv2d.from_conv(fused, envelope_size=self.envelope.size)
        conv.envelope = self.envelope  # the learned sigmas themselves
        return conv
    if fused is self:
        return self
    if isinstance(fused, (nn.Sequential, nn.ModuleList)):  # a container cannot hold the envelope as a child
        return nn.Sequential(self.envelope, fused)
    return envelope_block(fused, self.envelope)


def _reduce_ex(self, protocol):
    # the class is made at run time, so pickle (torch.save(model), spawn workers) rebuilds it from its base
    return _unpickle, (self._envconv_base,), self.__dict__


def _unpickle(base: type) -> nn.Module:
    block = base.__new__(base)
    block.__class__ = _class_for(base)
    return block


def _class_for(base: type) -> type:
    if base not in _CLASSES:
        namespace = {"forward": _forward, "_envconv_base": base, "__reduce_ex__": _reduce_ex,
                     "__module__": base.__module__,
                     "__doc__": f"{base.__name__} with a Gaussian envelope in front (envconv.convert.reparam)."}
        if callable(getattr(base, "fuse", None)):
            namespace["fuse"] = _fuse
        _CLASSES[base] = type(f"Envelope{base.__name__}", (base,), namespace)
    return _CLASSES[base]


def envelope_block(block: nn.Module, envelope: nn.Module) -> nn.Module:
    """Put ``envelope`` in front of ``block``, in place; returns ``block``.

    Args:
        block: any module whose forward takes the input first (a re-parameterizable block).
        envelope: a :class:`~envconv.GaussianEnvelope` over the block's input channels; it becomes
            the child ``block.envelope``.

    Raises:
        ValueError: ``block`` already has an envelope or a child named ``envelope``, or is an
            ``nn.Sequential`` / ``nn.ModuleList`` (its children, iterated in order, would include the envelope).

    Example:
        >>> import torch, envconv
        >>> class ConvBN(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.conv, self.bn = nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        ...     def forward(self, x):
        ...         return self.bn(self.conv(x))
        >>> block, x = ConvBN().eval(), torch.randn(1, 4, 8, 8)
        >>> want = block(x)
        >>> block = envelope_block(block, envconv.GaussianEnvelope.fixed(4, sigma=0.0))
        >>> type(block).__name__, isinstance(block, ConvBN), torch.equal(block(x), want)
        ('EnvelopeConvBN', True, True)
    """
    if is_envelope_block(block) or hasattr(block, "envelope"):
        raise ValueError(f"{type(block).__name__} already has an attribute 'envelope'")
    if isinstance(block, (nn.Sequential, nn.ModuleList)):
        raise ValueError(f"cannot put an envelope in front of {type(block).__name__}: it is a container, and its "
                         f"children (iterated in order) would include the envelope")
    block.__class__ = _class_for(type(block))
    block.envelope = envelope
    return block


def block_of(model: nn.Module, name: str) -> Optional[str]:
    """The name of the innermost re-parameterizable module around ``name`` (not itself), or ``None``."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        owner = ".".join(parts[:end])
        if reparameterizable(model.get_submodule(owner)):
            return owner
    return None

