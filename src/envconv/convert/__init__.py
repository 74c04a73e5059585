"""Model surgery: putting envelopes into a CNN, sizing them, folding blocks, and rebuilding them from weights.

The converter decides *where* replacements go; *what* goes there is a method of
:mod:`envconv.methods`. Modules are replaced by attribute name, never by position, and every
layer that is not selected is left exactly as it was.

* :mod:`~envconv.convert.placement` - the placement rules (``where``, ``stem``), Fig. 5c's stem;
* :mod:`~envconv.convert.replace` - :func:`disentangle`: the replacement, pools and blocks;
* :mod:`~envconv.convert.sizing` - :func:`shrink` and :func:`auto_envelope_size` after training;
* :mod:`~envconv.convert.reparam` - one envelope in front of a re-parameterizable block;
* :mod:`~envconv.convert.rebuild` - :func:`load_disentangled`: a plain model converted where its
  weights have envelopes.
"""

from .placement import (
    POOL_METHODS,
    SHORTCUT_NAMES,
    STEMS,
    WHERE_RULES,
    has_shortcuts,
    layer_path,
    modify_stem,
    select_layers,
    stem_name,
)
from .rebuild import disentangle_like, envelope_specs, load_disentangled
from .replace import disentangle, pool_channels, refuse_scripted, replace_modules
from .sizing import auto_envelope_size, shrink

__all__ = [
    "STEMS",
    "WHERE_RULES",
    "POOL_METHODS",
    "SHORTCUT_NAMES",
    "disentangle",
    "disentangle_like",
    "envelope_specs",
    "load_disentangled",
    "select_layers",
    "stem_name",
    "modify_stem",
    "shrink",
    "auto_envelope_size",
    "has_shortcuts",
    "layer_path",
    "pool_channels",
    "refuse_scripted",
    "replace_modules",
]
