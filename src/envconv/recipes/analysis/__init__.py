"""What the envelopes learned: sigma tables and plots, envelope images, effective receptive fields, GradCAM.

The numeric parts (``envelopes``, ``erf``, ``gradcam``) need only torch (GradCAM: the
``grad-cam`` package); :mod:`envconv.recipes.analysis.plots` and
:func:`~envconv.recipes.analysis.analyze` need matplotlib (``pip install 'envconv[analysis]'``).
Checkpoints are read through :mod:`envconv.recipes.rundir` and envelopes listed by
:func:`envconv.envelopes`; nothing here imports the trainer.
"""

from .erf import EffectiveReceptiveField, effective_receptive_field, stage_names, tile_to_size
from .gradcam import default_target_layer, gradcam_maps
from .kernel_images import envelope_kernel1d, envelope_kernel2d, envelope_row, mass_kept
from .report import AnalysisTarget, analyze, load_target

__all__ = ["envelope_kernel1d", "envelope_kernel2d", "envelope_row", "mass_kept",
           "EffectiveReceptiveField", "effective_receptive_field", "stage_names", "tile_to_size",
           "default_target_layer", "gradcam_maps", "analyze", "load_target", "AnalysisTarget"]
