"""What the envelopes learned: sigma tables and plots, envelope images, effective receptive fields, GradCAM.

The numeric parts (:mod:`.envelopes`, :mod:`.erf`, :mod:`.gradcam`) need only torch (GradCAM:
the ``grad-cam`` package); :mod:`.plots` and :func:`analyze` need matplotlib
(``pip install 'envconv[analysis]'``). Checkpoints are read through
:func:`envconv.checkpoint.model_from_checkpoint`; nothing here imports the trainer.
"""

from .envelopes import LayerSigmas, envelope_kernel1d, envelope_kernel2d, layer_sigmas, mass_kept
from .erf import EffectiveReceptiveField, effective_receptive_field, stage_names, tile_to_size
from .gradcam import default_target_layer, gradcam_maps
from .report import analyze, load_target

__all__ = ["LayerSigmas", "layer_sigmas", "envelope_kernel1d", "envelope_kernel2d", "mass_kept",
           "EffectiveReceptiveField", "effective_receptive_field", "stage_names", "tile_to_size",
           "default_target_layer", "gradcam_maps", "analyze", "load_target"]
