"""The paper's recipes on top of the library: config, data, training, evaluation, analysis, study, CLI.

``envconv`` (the library: kernels, ops, layers, methods, conversion, models, state-dict I/O)
imports only torch and numpy and never this subpackage; the recipes import the library. The
split follows torchvision's ``references/`` and timm's ``train.py``; the recipes ship inside
the package because the ``envconv`` command does. Their extra dependencies (pyyaml, tqdm and,
per command, matplotlib, scipy, scikit-learn, torchvision, grad-cam) load only when a recipe is
imported.
"""
