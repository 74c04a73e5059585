r"""How hard each envelope's sigma is pushed: eq. (8)'s gradient beside its convolution's, over a few batches.

Why do a trained network's deeper sigmas stay near their initial value? Either their gradient
is small, or it points a different way on every batch so that SGD averages it away. For each
envelope this measures, over ``batches`` training batches of a model (no step is taken):

* ``sigma_step``: the SGD step in sigma of the mean gradient, :math:`\eta\,|\bar g_c|\,
  \partial\sigma_c/\partial\tilde\sigma_c`, averaged over the channels; ``sigma_relative``:
  that over the channels' mean sigma;
* ``weight_relative``: the same for the convolution's weight, :math:`\eta\,\lVert\bar G\rVert /
  \lVert W\rVert`;
* ``sigma_consistency`` and ``weight_consistency``: :math:`|\bar g| / \overline{|g|}`, 1 when every
  batch pushes the same way, near :math:`1/\sqrt{B}` when the direction is random.

    python -m envconv.recipes.analysis.gradients --config fashion_mnist_resnet20 \
        --set data.train_subset=20000 --batches 40 --write results/gradients/fashion_mnist_resnet20.json
    python -m envconv.recipes.analysis.gradients --report results/gradients/fashion_mnist_resnet20.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...envelope import GaussianEnvelope
from ...kernels import sigma2_from_raw
from ...listing import envelopes, layer_name
from ...state_dict import atomic_write_bytes

__all__ = ["gradient_sizes", "markdown"]


def gradient_sizes(model: nn.Module, batches: Iterable[Sequence[torch.Tensor]], lr: float) -> List[Dict[str, Any]]:
    """Per envelope of ``model``: the sigma and weight gradients' SGD step sizes and consistency over ``batches``.

    Args:
        model: a model with learned envelopes (left unchanged: gradients are cleared, no step taken).
        batches: ``(images, labels)`` pairs; the loss is the cross-entropy.
        lr: the learning rate the steps are scaled by.

    Returns:
        One dict per envelope, in module order: ``layer``, ``path``, ``channels``, ``sigma``
        (channel mean), ``sigma_step``, ``sigma_relative``, ``weight_relative``,
        ``sigma_consistency``, ``weight_consistency``, ``batches``.

    Example:
        >>> import envconv
        >>> net = envconv.create_model("small_resnet20", num_classes=3, in_chans=1)
        >>> data = [(torch.randn(8, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))] * 2
        >>> rows = gradient_sizes(net, data, lr=0.1)
        >>> [r["layer"] for r in rows][:2], rows[0]["sigma_consistency"]  # one batch twice: the same push
        (['conv1', 'layer2.0.conv1'], 1.0)
    """
    owners = [(name, m) for name, m in model.named_modules() if isinstance(m, GaussianEnvelope) and m.learnable]
    owner = {name: model.get_submodule(layer_name(name)) if layer_name(name) != "(root)" else model
             for name, _ in owners}
    weights = {name: getattr(owner[name], "weight", None) for name, _ in owners}  # a pool's envelope has none
    sigma_grads: Dict[str, List[torch.Tensor]] = {name: [] for name, _ in owners}
    weight_grads: Dict[str, List[torch.Tensor]] = {name: [] for name, _ in owners}
    model.train()
    for images, labels in batches:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        for name, env in owners:
            sigma_grads[name].append(env.raw_sigma.grad.detach().double().clone())
            if weights[name] is not None:
                weight_grads[name].append(weights[name].grad.detach().double().clone())
    model.zero_grad(set_to_none=True)
    paths = {row.name: row.path for row in envelopes(model)}
    rows = []
    for name, env in owners:
        g = torch.stack(sigma_grads[name])
        raw = env.raw_sigma.detach().double()
        sigma = sigma2_from_raw(raw).sqrt()
        dsigma = torch.sigmoid(raw) / (2 * sigma)  # d sigma / d raw, sigma = sqrt(softplus(raw))
        mean_g = g.mean(0)
        step = lr * (mean_g.abs() * dsigma).mean()
        row = {
            "layer": layer_name(name), "path": paths.get(layer_name(name), ""), "channels": int(raw.shape[0]),
            "sigma": float(sigma.mean()), "sigma_step": float(step), "sigma_relative": float(step / sigma.mean()),
            "sigma_consistency": float(mean_g.abs().mean() / g.abs().mean(0).mean()),
            "weight_relative": None, "weight_consistency": None, "batches": int(g.shape[0])}
        if weights[name] is not None:
            gw = torch.stack(weight_grads[name])
            row["weight_relative"] = float(lr * gw.mean(0).norm() / weights[name].detach().double().norm())
            row["weight_consistency"] = float(gw.mean(0).norm() / gw.flatten(1).norm(dim=1).mean())
        rows.append(row)
    return rows


def markdown(result: Dict[str, Any]) -> str:
    """The table of a saved measurement (``--write``'s JSON): one row per envelope."""
    lines = [f"{result['config']} at initialisation, {result['batches']} training batches of {result['batch_size']} "
             f"(lr {result['lr']:g}; {result['machine']}, {result['date']}):", "",
             "| layer | path | C | sigma | sigma step | sigma step / sigma | weight step / weight | "
             "sigma consistency | weight consistency |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        weight = ("-", "-") if r["weight_relative"] is None else (f"{r['weight_relative']:.2e}",
                                                                   f"{r['weight_consistency']:.2f}")
        lines.append(f"| {r['layer']} | {r['path']} | {r['channels']} | {r['sigma']:.3f} | {r['sigma_step']:.2e} | "
                     f"{r['sigma_relative']:.2e} | {weight[0]} | {r['sigma_consistency']:.2f} | {weight[1]} |")
    return "\n".join(lines) + "\n"


def _measure(args: argparse.Namespace) -> Dict[str, Any]:
    import datetime
    import itertools

    from ..config import create_model_from_config, resolve_config
    from ..data import build_dataset, build_loader
    from ..machine import machine_info

    config = resolve_config(args.config, args.set)
    torch.manual_seed(config["train"]["seed"])
    model = create_model_from_config(config["model"])
    data = build_dataset(config["data"], "train", config["model"]["in_chans"], config["model"]["num_classes"])
    loader = build_loader(data, config["train"]["batch_size"], train=True, seed=config["train"]["seed"])
    rows = gradient_sizes(model, itertools.islice(loader, args.batches), config["train"]["lr"])
    return {"config": str(args.config), "overrides": list(args.set), "batches": args.batches,
            "batch_size": config["train"]["batch_size"], "lr": config["train"]["lr"],
            "machine": machine_info()["cpu"], "date": datetime.date.today().isoformat(), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="a config file or bundled name to build the model and data from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--write", type=Path, help="write the measurement as JSON here")
    p.add_argument("--report", type=Path, help="print the table of a saved measurement instead")
    args = p.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())), end="")
        return 0
    if not args.config:
        p.error("give --config (to measure) or --report (to print a saved measurement)")
    result = _measure(args)
    print(markdown(result), end="")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes((json.dumps(result, indent=1) + "\n").encode(), args.write)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
