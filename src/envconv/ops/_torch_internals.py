r"""Every private PyTorch API envconv uses, in one place, checked when envconv is imported.

Why each is needed, and the upstream issue that would let it go:

* **Autograd that** :mod:`torch.func` **and forward AD can differentiate.** ``register_autograd``
  of :func:`torch.library.custom_op` builds an ``autograd.Function`` without ``setup_context``,
  which :mod:`torch.func`'s transforms refuse (pytorch#168393, #170834; ``jacrev``: #179652), and
  without ``jvp``, so forward-mode AD passes it by and the tangent comes out zero - silently wrong.
  :func:`register_autograd_kernel` installs, at the op's Autograd key, what functorch builds for
  its own ops at every transform level (and what PyTorch's fix, pytorch#184974, does): a
  single-level ``autograd.Function`` with ``setup_context``, ``backward`` and ``jvp``. It needs
  ``torch.autograd.function._SingleLevelFunction``,
  ``torch._functorch.utils.enable_single_level_autograd_function``, the redispatch below autograd
  (``torch._C._AutoDispatchBelowAutograd``, ``torch._C._after_autograd_keyset``,
  ``OpOverload.redispatch``) and the gradient modes a transform level runs under
  (``torch._C._are_functorch_transforms_active``, ``torch._C._is_fwd_grad_enabled``,
  ``torch.autograd.forward_ad._current_level`` / ``_set_fwd_grad_enabled``). Dynamo may drop a
  custom ``jvp`` under ``torch.compile`` (pytorch#192985): ``tests/ops`` checks compiled jvp.
* **Autocast to the autocast dtype of the moment.** ``torch.library.register_autocast`` casts to
  one dtype fixed when it is registered (float16 *or* bfloat16), where ``F.conv2d`` follows
  ``torch.autocast(dtype=...)``; :func:`register_autocast_kernel` reads the dtype per call and
  needs ``torch._C.DispatchKeySet`` / ``DispatchKey`` / ``_ExcludeDispatchKeyGuard``.
* **The C++ kernel's build folder**, for messages only: ``torch.utils.cpp_extension._get_build_directory``.

If a PyTorch release moves any of them, ``import envconv`` fails here naming the symbol (never a
silently wrong gradient later).
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

__all__ = ["register_autograd_kernel", "register_autocast_kernel", "transforms_active", "build_directory"]

#: module -> names: the private symbols below, resolved once at import.
_REQUIRED: Dict[str, Tuple[str, ...]] = {
    "torch.autograd.function": ("_SingleLevelFunction",),
    "torch._functorch.utils": ("enable_single_level_autograd_function",),
    "torch.autograd.forward_ad": ("_current_level", "_set_fwd_grad_enabled"),
    "torch._C": ("_AutoDispatchBelowAutograd", "_after_autograd_keyset", "_are_functorch_transforms_active",
                 "_is_fwd_grad_enabled", "DispatchKeySet", "DispatchKey", "_ExcludeDispatchKeyGuard"),
}


def _resolve() -> Dict[str, object]:
    found = {}
    for module, names in _REQUIRED.items():
        mod = importlib.import_module(module)
        for name in names:
            if not hasattr(mod, name):
                raise ImportError(f"envconv needs PyTorch's private {module}.{name} (envconv/ops/_torch_internals.py "
                                  f"says why), which torch {torch.__version__} does not have; install a tested "
                                  f"torch (the README lists them) or report it to envconv")
            found[name] = getattr(mod, name)
    if not hasattr(torch._ops.OpOverload, "redispatch"):
        raise ImportError(f"envconv needs OpOverload.redispatch, which torch {torch.__version__} does not have")
    return found


_P = _resolve()
_lib = torch.library.Library("envconv", "FRAGMENT")  # kept alive: it holds the registrations


def transforms_active() -> bool:
    """Whether a :mod:`torch.func` transform (vmap, grad, jvp, ...) is running."""
    return bool(_P["_are_functorch_transforms_active"]())


def _differentiating(args) -> bool:
    """Whether a call must build the Function: autograd, forward AD or a torch.func transform may need it."""
    if transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return True
    return torch.is_grad_enabled() and any(isinstance(a, Tensor) and a.requires_grad for a in args)


def register_autograd_kernel(name: str, setup_context: Callable, backward: Callable, jvp: Callable) -> None:
    """Make ``setup_context`` / ``backward`` / ``jvp`` the autograd of ``torch.ops.envconv.<name>``.

    The three take the op's own arguments, as :meth:`torch.library.custom_op.register_autograd`'s
    do; the Function's forward is the op below autograd, with the dispatch key set and the
    caller's gradient modes first.
    """
    op = getattr(torch.ops.envconv, name).default

    def below_autograd(keyset, *args):
        with _P["_AutoDispatchBelowAutograd"]():
            return op.redispatch(keyset & _P["_after_autograd_keyset"], *args)

    def function_forward(keyset, modes, *args):
        # The Function turns gradients off for its forward; the levels of a torch.func transform
        # below this one must still record theirs (nested grad, jacfwd(jacrev)): the caller's modes.
        with torch.set_grad_enabled(modes[0]), _P["_set_fwd_grad_enabled"](modes[1]):
            return below_autograd(keyset, *args)

    def function_backward(ctx, *grads):
        needs = ctx.needs_input_grad
        ctx.needs_input_grad = needs[2:]  # without the key set's and the modes'
        try:
            return (None, None, *backward(ctx, *grads))
        finally:
            ctx.needs_input_grad = needs

    function = type(f"{name}_function", (_P["_SingleLevelFunction"],), {
        "forward": staticmethod(function_forward),
        "setup_context": staticmethod(lambda ctx, inputs, output: setup_context(ctx, inputs[2:], output)),
        "backward": staticmethod(function_backward),
        "jvp": staticmethod(lambda ctx, _keyset, _modes, *tangents: jvp(ctx, *tangents)),
    })

    def kernel(keyset, *args):
        if not _differentiating(args):
            return below_autograd(keyset, *args)
        modes = (torch.is_grad_enabled(), _P["_is_fwd_grad_enabled"]())
        with _P["enable_single_level_autograd_function"]():
            return function.apply(keyset, modes, *args)

    _lib.impl(name, kernel, "Autograd", with_keyset=True)


#: The autocast dispatch keys by device type (a device without one gets no cast rule, as for any op).
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA", "xpu": "AutocastXPU", "mps": "AutocastMPS"}


def register_autocast_kernel(name: str, cast: Tuple[int, ...]) -> None:
    """Under autocast, the op's arguments at positions ``cast`` go to the autocast dtype, as ``F.conv2d``'s do.

    Like autocast's own rule for convolutions, float64 and non-float tensors are left alone;
    ``raw_sigma`` keeps its dtype (the kernel of eq. (9) is computed in it, then cast).
    """
    op = getattr(torch.ops.envconv, name).default
    for device, key in _AUTOCAST_KEYS.items():
        if not hasattr(_P["DispatchKey"], key):
            continue
        excluded = _P["DispatchKeySet"](getattr(_P["DispatchKey"], key))

        def kernel(keyset, *args, _device=device, _excluded=excluded):
            dtype = torch.get_autocast_dtype(_device)
            args = [a.to(dtype) if i in cast and isinstance(a, Tensor) and a.dtype in (torch.float32, torch.float16,
                                                                                         torch.bfloat16)
                    else a for i, a in enumerate(args)]
            with _P["_ExcludeDispatchKeyGuard"](_excluded):
                return op(*args)

        _lib.impl(name, kernel, key, with_keyset=True)


def build_directory(name: str) -> str:
    """The folder where ``torch.utils.cpp_extension.load`` builds extension ``name``."""
    from torch.utils.cpp_extension import _get_build_directory

    return _get_build_directory(name, verbose=False)
