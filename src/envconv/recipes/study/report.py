"""``envconv study --report``: tables, plots and verdicts from a study's run directories alone.

Reads each run's records through :class:`~envconv.recipes.rundir.RunDir`: its summary (final
test error, parameters), learned sigmas, seconds per epoch, the evaluations with shrunk
envelopes, the transfer probe and the hardware it ran on; and writes
``DOCS/reproduction.md``, ``DOCS/reproduction/results.csv`` and the plots beside it.
Runs that have not finished are left out and counted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...listing import EnvelopeInfo
from ...state_dict import atomic_write_bytes
from ..rundir import RunDir
from .plan import STUDY_DIR, Claim, Plan
from .stats import Difference, paired_difference, summarize

__all__ = ["Result", "collect_results", "write_results_csv", "verdict", "detectable", "write_report", "RESULT_COLUMNS"]

RESULT_COLUMNS = ("run", "table", "label", "seed", "epochs", "test_top1_err", "probe_err", "train_seconds")


@dataclass
class Result:
    """One row of ``results.csv``: a trained run, or an evaluation of its checkpoint."""

    run: str
    name: str            # entry or evaluation name
    tables: List[str]
    label: str
    seed: int
    epochs: int
    test_top1_err: float
    probe_err: Optional[float]
    train_seconds: Optional[float]
    epoch_seconds: Optional[float] = None
    parameters: Optional[int] = None
    summary: Optional[Dict[str, Any]] = None
    info: Optional[Dict[str, Any]] = None
    config: Optional[Dict[str, Any]] = None

    def csv_row(self) -> List[str]:
        def num(x):
            return "" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)
        return [self.run, ";".join(self.tables), self.label, str(self.seed), str(self.epochs),
                num(self.test_top1_err), num(self.probe_err), num(self.train_seconds)]


def collect_results(plan: Plan, out_dir: Path) -> List[Result]:
    """The rows of every finished run (and its evaluations), in plan order.

    Example:
        >>> results = collect_results(load_plan("studies/fashion_mnist.yaml"),
        ...                           Path("results/study-fashion_mnist"))  # doctest: +SKIP
    """
    results = []
    for run in plan.runs(out_dir):
        run_dir = RunDir.of_config(run.config)
        summary = run_dir.read_json(run_dir.summary_file)
        if summary is None or summary.get("final_val") is None:
            continue
        seconds = run_dir.epoch_seconds()
        probe = run_dir.read_json(RunDir.probe_file(run_dir.last, plan.probe["dataset"])) if plan.probe else None
        info = run_dir.read_json(run_dir.run_info_file)
        results.append(Result(run.name, run.entry.name, run.entry.tables, run.entry.label, run.seed,
                              run.config["train"]["epochs"], summary["final_val"]["top1_err"],
                              probe["val"]["top1_err"] if probe else None, sum(seconds) if seconds else None,
                              statistics.median(seconds) if seconds else None, summary["parameters"], summary, info,
                              run.config))
        for ev in plan.evaluations:
            result = (run_dir.read_json(RunDir.eval_file(run_dir.last, ev.envelope_size, ev.object_scale,
                                                         ev.recalibrate_bn))
                      if ev.of == run.entry.name else None)
            if result is not None:
                results.append(Result(run.name, ev.name, ev.tables, ev.label, run.seed, run.config["train"]["epochs"],
                                      result["top1_err"], None, None))
    return results


def write_results_csv(results: List[Result], path: Path) -> None:
    """Write ``results`` as ``results.csv`` (the columns of ``RESULT_COLUMNS``), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    writer.writerows(r.csv_row() for r in results)
    atomic_write_bytes(buffer.getvalue().encode(), path)


def _by_seed(results: List[Result], name: str, metric: str) -> Dict[int, float]:
    values = {}
    for r in results:
        if r.name == name:
            value = r.test_top1_err if metric == "test" else r.probe_err
            if value is not None:
                values[r.seed] = value
    return values


def verdict(claim: Claim, diff: Optional[Difference], margin: float) -> str:
    """The verdict "holds", "does not hold" or "inconclusive", from the 95% interval of the paired difference (points).

    ``better A than B``: holds when the interval of err(A) - err(B) lies below 0, does not
    hold when it lies above 0. ``same A as B``: holds when the interval lies inside
    [-margin, margin], does not hold when it lies wholly outside.
    """
    if diff is None or diff.low is None:
        return "inconclusive (fewer than 2 paired seeds)"
    if claim.kind == "better":
        if diff.high < 0:
            return "holds"
        if diff.low > 0:
            return "does not hold (significantly worse)"
        return "inconclusive"
    if -margin <= diff.low and diff.high <= margin:
        return "holds"
    if diff.low > margin or diff.high < -margin:
        return "does not hold"
    return "inconclusive"


def _labels(plan: Plan) -> Dict[str, str]:
    return {**{e.name: e.label for e in plan.entries}, **{e.name: e.label for e in plan.evaluations}}


def _papers(plan: Plan) -> Dict[str, Optional[float]]:
    return {**{e.name: e.paper for e in plan.entries}, **{e.name: e.paper for e in plan.evaluations}}


def _has_paper_numbers(plan: Plan) -> bool:
    """Whether any setting of the plan has a number of the paper (a study of its idea elsewhere has none)."""
    return any(paper is not None for paper in _papers(plan).values())


def _row(cells: List[str], drop=frozenset(), pad: str = " ") -> str:
    """A markdown table row of ``cells`` but those at the indices ``drop`` (``pad=""``: the separator row)."""
    return f"|{pad}" + f"{pad}|{pad}".join(str(c) for i, c in enumerate(cells) if i not in drop) + f"{pad}|"


def _table_names(plan: Plan) -> List[str]:
    tables: List[str] = []
    for item in [*plan.entries, *plan.evaluations]:
        tables += [t for t in item.tables if t not in tables]
    return sorted(tables)


def _members(plan: Plan, table: str) -> List[str]:
    return [item.name for item in [*plan.entries, *plan.evaluations] if table in item.tables]


def _pyplot():
    """The pyplot of matplotlib (Agg), or ``None`` without matplotlib: the report is then written without figures."""
    from ..analysis.plots import pyplot

    try:
        return pyplot()
    except ImportError:
        return None


def _plot(plan: Plan, results: List[Result], names: List[str], metric: str, title: str, path: Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    labels = _labels(plan)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.4))
    for x, name in enumerate(names):
        values = list(_by_seed(results, name, metric).values())
        s = summarize(values)
        if s is None:
            continue
        ax.errorbar([x], [s.mean], yerr=[s.std or 0.0], fmt="o", color="C0", capsize=5, markersize=7)
        ax.scatter([x + 0.12] * len(values), values, s=12, color="C1", zorder=3)
    base = summarize(list(_by_seed(results, plan.baseline, metric).values()))
    if base is not None:
        ax.axhline(base.mean, color="0.5", linestyle="--", linewidth=1, label="baseline mean")
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([labels[n] for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test top-1 error (%)" if metric == "test" else "probe top-1 error (%)")
    ax.set_title(title + " (mean ± std over seeds; dots: seeds)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _table_section(plan: Plan, results: List[Result], table: str, asset_dir: Path, docs_dir: Path) -> List[str]:
    names, labels, papers = _members(plan, table), _labels(plan), _papers(plan)
    base_err = _by_seed(results, plan.baseline, "test")
    base_params = next((r.parameters for r in results if r.name == plan.baseline and r.parameters), None)
    trained_as = {ev.name: ev.of for ev in plan.evaluations}
    drop = set() if _has_paper_numbers(plan) else {1}  # the paper's column
    header = ["setting", "paper top-1 err (%)", "ours top-1 err (%)", "Δ to baseline [95% CI]", "s/epoch (median)",
              "extra params"]
    lines = [f"### Table {table}", "", _row(header, drop), _row(["---"] * len(header), drop, "")]
    for name in names:
        rows = [r for r in results if r.name == name]
        s = summarize([r.test_top1_err for r in rows])
        diff = paired_difference(_by_seed(results, name, "test"), base_err) if name != plan.baseline else None
        secs = [r.epoch_seconds for r in rows if r.epoch_seconds]
        trained = trained_as.get(name, name)  # an evaluation has its trained entry's parameters
        params = next((r.parameters for r in results if r.name == trained and r.parameters), None)
        paper = papers[name]
        lines.append(_row([labels[name], "" if paper is None else f"{paper:.2f}", s if s else "no finished run",
                           diff if diff else "-", f"{statistics.median(secs):.0f}" if secs else "-",
                           "" if params is None or base_params is None else f"{params - base_params:+,}"], drop))
    png = asset_dir / f"table-{table}.png"
    if _plot(plan, results, names, "test", f"Table {table}", png):
        lines += ["", f"![Table {table}]({png.relative_to(docs_dir).as_posix()})"]
    return lines + [""]


def _probe_section(plan: Plan, results: List[Result], asset_dir: Path, docs_dir: Path) -> List[str]:
    names = [e.name for e in plan.entries]
    base = _by_seed(results, plan.baseline, "probe")
    lines = ["### Table 2 analogue: transfer by a linear probe", "",
             f"Frozen features of each trained model (its last checkpoint), a new linear classifier trained on "
             f"the `{plan.probe['dataset']}` task (options {json.dumps(plan.probe)}).", "",
             "| setting | paper: mean err over its 5 datasets (%) | ours probe err (%) | Δ to baseline [95% CI] |",
             "|---|---|---|---|"]
    for entry in plan.entries:
        s = summarize(list(_by_seed(results, entry.name, "probe").values()))
        diff = paired_difference(_by_seed(results, entry.name, "probe"), base) if entry.name != plan.baseline else None
        paper = f"{sum(entry.probe_paper) / len(entry.probe_paper):.2f}" if entry.probe_paper else ""
        lines.append(f"| {entry.label} | {paper} | {s if s else '-'} | {diff if diff else '-'} |")
    png = asset_dir / "table-2-probe.png"
    if _plot(plan, results, names, "probe", "Linear probe", png):
        lines += ["", f"![probe]({png.relative_to(docs_dir).as_posix()})"]
    return lines + [""]


def _is_ours(result: Result) -> bool:
    """A trained run of the paper's method: one learned sigma per channel, envelope before the conv."""
    model = result.config["model"] if result.config else None
    return bool(model) and model["method"] == "gaussian" and not model["shared_sigma"] \
        and model["order"] in (None, "env-conv") and model["options"].get("learnable", True)


def _sigma_section(plan: Plan, results: List[Result], asset_dir: Path, docs_dir: Path) -> List[str]:
    run = next((r for r in results if _is_ours(r)), None)
    if run is None:
        return []
    lines = [f"### Learned sigma per layer ({run.run}, last epoch)", "",
             "| layer | channels | sigma mean | min | max |", "|---|---|---|---|---|"]
    lines += [f"| {e['name']} | {e['channels']} | {e['sigma_mean']:.3f} | {e['sigma_min']:.3f} | {e['sigma_max']:.3f} |"
              for e in run.summary["envelopes"]]
    png = asset_dir / "sigma.png"
    layers = RunDir.of_config(run.config).envelopes()
    if _plot_sigmas(layers, f"{run.run}: sigma per channel (Fig. 4a)", png):
        lines += ["", f"![sigma per channel]({png.relative_to(docs_dir).as_posix()})"]
    return lines + [""]


def _learned_sigma_entries(plan: Plan, results: List[Result]) -> List[str]:
    """Ours (the first entry with one learned sigma per channel before the conv) and the sigma table's entries."""
    ours = next((r.name for r in results if _is_ours(r)), None)
    names = ([ours] if ours else []) + [n for n in _members(plan, "sigma") if n != ours]
    return [n for n in names if any(r.name == n and r.config for r in results)]


def sigma_trajectories(plan: Plan, results: List[Result]) -> Dict[str, Dict[str, np.ndarray]]:
    """Per learned-sigma entry and layer: an array (seeds, epochs + 1, 3) of each epoch's channel mean, min, max.

    Epoch 0 is the fresh model's sigma (before training); the rest are the runs' ``sigma.json``
    records. Seeds whose runs have not finished are left out.
    """
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for name in _learned_sigma_entries(plan, results):
        per_layer: Dict[str, list] = {}
        for r in (r for r in results if r.name == name and r.config):
            run = RunDir.of_config(r.config)
            initial = {e.name: e.sigmas for e in run.envelopes(initial=True)}
            records = [initial] + [rec["sigma"] for rec in run.sigma_records()]
            for layer in initial:
                per_layer.setdefault(layer, []).append(
                    [(float(np.mean(s)), float(np.min(s)), float(np.max(s))) for s in (rec[layer] for rec in records)])
        out[name] = {layer: np.asarray(rows) for layer, rows in per_layer.items()}
    return out


def _sigma_movement_section(plan: Plan, results: List[Result], asset_dir: Path, docs_dir: Path) -> List[str]:
    trajectories = sigma_trajectories(plan, results)
    if not trajectories:
        return []
    labels = _labels(plan)
    lines = ["### How far the learned sigmas move", "",
             "Each layer's sigma before training and after the last epoch: the channel mean (mean over "
             "seeds), its move relative to the initial value, and the channel range (the smallest minimum "
             "and largest maximum over the seeds).", "",
             "| setting | layer | seeds | initial | last (mean) | move | channel range |",
             "|---|---|---|---|---|---|---|"]
    for name, layers in trajectories.items():
        for layer, t in layers.items():
            first, last = t[:, 0, 0].mean(), t[:, -1, 0].mean()
            lines.append(f"| {labels[name]} | {layer} | {t.shape[0]} | {first:.3f} | {last:.3f} "
                         f"| {100 * (last - first) / first:+.1f}% | {t[:, -1, 1].min():.3f}-{t[:, -1, 2].max():.3f} |")
    png = asset_dir / "sigma-trajectories.png"
    if _plot_trajectories(trajectories, labels, png):
        lines += ["", f"![sigma per layer over the epochs]({png.relative_to(docs_dir).as_posix()})"]
    return lines + [""]


def _plot_trajectories(trajectories, labels: Dict[str, str], png: Path) -> bool:
    """A panel per layer: each setting's channel mean over the epochs (mean over seeds), its channel range shaded."""
    plt = _pyplot()
    if plt is None:
        return False
    layers = list(next(iter(trajectories.values())))
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers), 3.0), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for i, (name, per_layer) in enumerate(trajectories.items()):
            t = per_layer[layer].mean(0)
            epochs = np.arange(t.shape[0])
            ax.plot(epochs, t[:, 0], color=f"C{i}", label=labels[name])
            ax.fill_between(epochs, t[:, 1], t[:, 2], color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set_title(layer, fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("sigma (channel mean, range)", fontsize=8)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def sigma_by_object_scale(plan: Plan, results: List[Result]) -> Dict[str, Dict[float, List[float]]]:
    """Per layer: its channel mean of sigma after the last epoch, one value per seed, by the training objects' scale.

    Read from the learned-sigma entries (:func:`sigma_trajectories`); empty unless they were trained at two or
    more object scales (``data.object_scale``), one entry per scale.
    """
    names = _learned_sigma_entries(plan, results)
    scale_of = {r.name: float(r.config["data"].get("object_scale", 1.0)) for r in results
                if r.config and r.name in names}
    scales: Dict[float, List[str]] = {}
    for name, scale in scale_of.items():
        scales.setdefault(scale, []).append(name)
    if len(scales) < 2 or any(len(entries) > 1 for entries in scales.values()):
        return {}
    trajectories = sigma_trajectories(plan, results)
    out: Dict[str, Dict[float, List[float]]] = {}
    for scale, (name,) in sorted(scales.items()):
        for layer, t in trajectories[name].items():
            out.setdefault(layer, {})[scale] = [float(v) for v in t[:, -1, 0]]
    return out


def _sigma_scale_section(plan: Plan, results: List[Result], asset_dir: Path, docs_dir: Path) -> List[str]:
    return _by_scale_section(
        "Learned sigma by the training objects' scale",
        "Each layer's channel mean of sigma after the last epoch, by the scale of the objects it was "
        "trained on: mean ± standard deviation over seeds (n).", "layer", sigma_by_object_scale(plan, results), 3,
        ("learned sigma (channel mean)", "training object scale", "learned sigma by object scale"),
        asset_dir / "sigma-scale.png", docs_dir)


def _by_scale_section(title: str, intro: str, column: str, curves: Dict[str, Dict[float, List[float]]], digits: int,
                      plot: Tuple[str, str, str], png: Path, docs_dir: Path, dashed=frozenset()) -> List[str]:
    """A table of ``curves`` (a row per label: mean ± std over seeds at each object scale) and their figure.

    ``plot`` is the figure's y label, x label and alt text; the curves named in ``dashed`` are drawn dashed.
    """
    if not curves:
        return []
    scales = sorted({s for curve in curves.values() for s in curve})
    lines = [f"### {title}", "", intro, "", _row([column, *(f"{s:g}x" for s in scales)]),
             _row(["---"] * (1 + len(scales)), pad="")]
    for label, curve in curves.items():
        lines.append(_row([label, *(summarize(curve[s]).text(digits) if s in curve else "" for s in scales)]))
    if _plot_by_scale(curves, scales, *plot[:2], png, dashed):
        lines += ["", f"![{plot[2]}]({png.relative_to(docs_dir).as_posix()})"]
    return lines + [""]


def errors_by_test_scale(plan: Plan, results: List[Result]) -> Dict[Tuple[str, int], Dict[float, List[float]]]:
    """Per entry and BatchNorm recalibration with object-scale evaluations: test error by test object scale.

    Keys are ``(entry, recalibrate_bn)``, values one error per seed at each of two or more scales. Without
    recalibration the entry's own runs give the error at its training scale
    (``data.object_scale``); the evaluations give the other scales.
    """
    scaled = [ev for ev in plan.evaluations if ev.object_scale is not None and ev.envelope_size is None]
    out: Dict[Tuple[str, int], Dict[float, List[float]]] = {}
    for key in dict.fromkeys((ev.of, ev.recalibrate_bn) for ev in scaled):
        curve: Dict[float, List[float]] = {}
        for r in results:
            if not key[1] and r.name == key[0] and r.config:
                curve.setdefault(float(r.config["data"].get("object_scale", 1.0)), []).append(r.test_top1_err)
        for ev in (ev for ev in scaled if (ev.of, ev.recalibrate_bn) == key):
            errors = [r.test_top1_err for r in results if r.name == ev.name]
            if errors:
                curve.setdefault(ev.object_scale, []).extend(errors)
        out[key] = dict(sorted(curve.items()))
    return {key: curve for key, curve in out.items() if len(curve) > 1}  # one scale is not a curve


def _curve_label(labels: Dict[str, str], key: Tuple[str, int]) -> str:
    return labels[key[0]] + (f", BatchNorm statistics recomputed ({key[1]} batches)" if key[1] else "")


def _test_scale_section(plan: Plan, results: List[Result], asset_dir: Path, docs_dir: Path) -> List[str]:
    labels = _labels(plan)
    by_key = errors_by_test_scale(plan, results)
    curves = {_curve_label(labels, key): curve for key, curve in by_key.items()}
    dashed = {_curve_label(labels, key) for key in by_key if key[1]}  # BatchNorm statistics recomputed
    return _by_scale_section(
        "Test error by the test objects' scale",
        "Each setting trained at one object scale, its checkpoints tested with the test garments "
        "resized to each scale on the same canvas: mean ± standard deviation over seeds (n).", "setting", curves, 2,
        ("test top-1 error (%)", "test object scale", "test error by test object scale"),
        asset_dir / "test-scale.png", docs_dir, dashed)


def _plot_by_scale(curves: Dict[str, Dict[float, List[float]]], scales: List[float], ylabel: str, xlabel: str,
                   png: Path, dashed=frozenset()) -> bool:
    """One line per labelled curve (mean ± std over seeds at each scale) against the object scale, on a log axis."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (label, curve) in enumerate(curves.items()):
        xs = list(curve)
        means = [float(np.mean(curve[s])) for s in xs]
        spread = [float(np.std(curve[s], ddof=1)) if len(curve[s]) > 1 else 0.0 for s in xs]
        ax.errorbar(xs, means, yerr=spread, color=f"C{i % 10}", marker="o", markersize=3, capsize=2,
                    linestyle="--" if label in dashed else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(scales, [f"{s:g}" for s in scales], fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    # below the axes: inside, the legend of six curves hid the steep ends of the test-scale curves
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def _plot_sigmas(layers: List[EnvelopeInfo], title: str, png: Path) -> bool:
    """The analysis report's Fig. 4a plot of one run (False when matplotlib is missing or there are no sigmas)."""
    plt = _pyplot()
    if plt is None or not layers:
        return False
    from ..analysis.plots import plot_sigmas

    fig = plot_sigmas(layers, title)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def _claim_differences(plan: Plan, results: List[Result]) -> List[Optional[Difference]]:
    return [paired_difference(_by_seed(results, c.a, c.metric), _by_seed(results, c.b, c.metric))
            for c in plan.claims]


def detectable(diff: Optional[Difference]) -> Optional[float]:
    """The smallest absolute mean paired difference these seeds could tell from 0: the 95% interval's half-width."""
    if diff is None or diff.low is None:
        return None
    return (diff.high - diff.low) / 2


def _paper_difference(plan: Plan, claim: Claim) -> Optional[float]:
    papers = _papers(plan)
    a, b = papers.get(claim.a), papers.get(claim.b)
    return None if claim.metric != "test" or a is None or b is None else a - b


def _claims_section(plan: Plan, results: List[Result], asset_dir: Path, docs_dir: Path) -> List[str]:
    labels = _labels(plan)
    diffs = _claim_differences(plan, results)
    drop = set() if _has_paper_numbers(plan) else {7}  # the paper's Δ
    header = ["table", "claim of the paper" if not drop else "claim", "Δ [95% CI]", "verdict", "comparison", "metric",
              "detectable", "paper Δ"]
    lines = ["## Verdicts", "",
             f"Each claim compares two settings seed by seed (Δ = error of the first minus the second, in points, "
             f"with the 95% t-interval of the mean paired difference). *better*: holds when the interval lies "
             f"below 0. *same*: holds when it lies inside ±{plan.margin} points. *Detectable*: the interval's "
             f"half-width, the smallest mean difference these seeds could have told from 0.", "",
             _row(header, drop), _row(["---"] * len(header), drop, "")]
    for c, diff in zip(plan.claims, diffs):
        relation = "better than" if c.kind == "better" else "same as"
        half, paper = detectable(diff), _paper_difference(plan, c)
        lines.append(_row([c.table, c.text, _unbroken(diff), verdict(c, diff, plan.margin),
                           f"{labels[c.a]} {relation} {labels[c.b]}", c.metric, "-" if half is None else f"±{half:.2f}",
                           "" if paper is None else f"{paper:+.2f}"], drop))
    png = asset_dir / "claims.png"
    if _forest_plot(plan, diffs, png):
        lines += ["", f"![paired differences of every claim]({png.relative_to(docs_dir).as_posix()})"]
    return lines + [""]


def _unbroken(diff: Optional[Difference]) -> str:
    """A difference for a narrow table column: its interval never wraps (non-breaking spaces), ``(n=..)`` may."""
    return str(diff).replace(" [", "\u00a0[").replace(", ", ",\u00a0") if diff else "-"


def _forest_plot(plan: Plan, diffs: List[Optional[Difference]], path: Path) -> bool:
    """Every claim's paired difference with its 95% interval, 0 and the ±margin band, the paper's Δ beside it."""
    plt = _pyplot()
    if plt is None:
        return False
    rows = [(c, d) for c, d in zip(plan.claims, diffs) if d is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.38 * len(rows)))
    ax.axvspan(-plan.margin, plan.margin, color="0.9", label=f"±{plan.margin} points")
    ax.axvline(0, color="0.4", linewidth=1)
    for y, (claim, diff) in enumerate(rows):
        low, high = (diff.low, diff.high) if diff.low is not None else (diff.mean, diff.mean)
        ax.errorbar([diff.mean], [y], xerr=[[diff.mean - low], [high - diff.mean]], fmt="o", color="C0", capsize=3,
                    label="ours: Δ [95% CI]" if y == 0 else None)
        paper = _paper_difference(plan, claim)
        if paper is not None:
            ax.plot([paper], [y], marker="D", color="C3", linestyle="none",
                    label="paper (ResNet-50, ImageNet)" if not any(_paper_difference(plan, c) is not None
                                                                     for c, _ in rows[:y]) else None)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{c.table}: {c.a} vs {c.b}" + (" (probe)" if c.metric == "probe" else "") for c, _ in rows],
                       fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("paired difference of top-1 error (points; < 0: the first is better)")
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _hardware_lines(results: List[Result]) -> List[str]:
    """Which machine trained which runs (``study-run.json``): a different CPU may round differently."""
    machines: Dict[str, List[str]] = {}
    for r in results:
        if r.info and r.summary:
            hw = r.info["hardware"]
            threads = f"{hw['torch_threads']} torch thread{'s' if hw['torch_threads'] != 1 else ''}"
            key = (f"{hw['cpu']} ({hw['cores']} cores, {threads})"
                   f"{', GPU ' + hw['gpu'] if hw.get('gpu') else ''}; torch {hw['torch']}, envconv {hw['envconv']}")
            machines.setdefault(key, []).append(r.run)
    if len(machines) == 1:
        return [f"- Hardware: {next(iter(machines))}."]
    return ["- Hardware (the runs were trained on different machines, which may round differently):",
            *[f"  - {key}: {', '.join(runs)}" for key, runs in machines.items()]]


def _as_given(path: Path) -> str:
    """``path`` as the page's commands take it: relative to the working directory when inside it."""
    path = Path(path)
    if path.is_absolute():
        relative = Path(os.path.relpath(path))
        if relative.parts[:1] != ("..",):
            return relative.as_posix()
    return path.as_posix()


def _bundled(plan: Plan) -> bool:
    """Whether the plan is one shipped with envconv, found by its name (an absolute path that differs by install)."""
    return plan.path.is_absolute() and plan.path.parent == STUDY_DIR


def _plan_as_given(plan: Plan) -> str:
    """The plan as the page's commands name it: a bundled plan by its name, the same in every clone."""
    return plan.path.stem if _bundled(plan) else _as_given(plan.path)


def _plan_description(plan: Plan) -> str:
    """The plan in the page's setup: a bundled plan also by its file in the repository, not where it is installed."""
    if _bundled(plan):
        return f"`{plan.path.stem}` (bundled: `studies/{plan.path.name}`)"
    return f"`{_as_given(plan.path)}`"


def _setup_section(plan: Plan, results: List[Result], out_dir: Path, docs_dir: Path, n_runs: int) -> List[str]:
    total = sum(r.train_seconds or 0 for r in results)
    first = next((r.summary for r in results if r.summary), None)
    lines = ["## Setup", "",
             f"- Plan: {_plan_description(plan)}; base config `{plan.base}` with "
             f"{', '.join(f'`{o}`' for o in plan.overrides) or 'no overrides'}.",
             f"- Seeds: {_seeds_text(plan)}; {sum(1 for r in results if r.summary)} of "
             f"{n_runs} runs finished; training time of the finished runs {total / 3600:.1f} h.",
             "- Test error is the last epoch's (no selection on the test set).",
             *_failed_lines(plan, out_dir),
             f"- s/epoch: the median over a setting's epochs of training wall-clock seconds (`{RunDir.METRICS}`). The "
             "machine was shared with other work during the study, so these are rough; `benchmarks/` measures "
             "speed properly."]
    if first:
        lines.append(f"- Model: {first['model']}.")
    lines += _hardware_lines(results)
    lines += ["", "Commands (from the repository root):", "", "```bash",
              "# train what is missing; resumes",
              f"envconv study {_plan_as_given(plan)} --out {_as_given(out_dir)}",
              "# this page",
              f"envconv study {_plan_as_given(plan)} --out {_as_given(out_dir)} \\\n"
              f"    --report --docs {_as_given(docs_dir)}",
              "```", ""]
    return lines


def _seeds_text(plan: Plan) -> str:
    own = [f"{e.name} {e.seeds}" for e in plan.entries if e.seeds is not None]
    return f"{plan.seeds}" + (f" (own seeds: {'; '.join(own)})" if own else "")


def _failed_lines(plan: Plan, out_dir: Path) -> List[str]:
    failed = [RunDir.of_config(run.config).read_json(RunDir.FAILED) for run in plan.runs(out_dir)]
    return [f"- Failed, left out: {item['run']} ({item['error']})." for item in failed if item]


def write_report(plan: Plan, out_dir: Path, docs_dir: Path) -> Dict[str, Any]:
    """Write ``docs_dir/reproduction.md``, ``docs_dir/reproduction/results.csv`` and the plots.

    Example:
        >>> write_report(load_plan("studies/fashion_mnist.yaml"), Path("results/study-fashion_mnist"),
        ...              Path("docs"))  # doctest: +SKIP
    """
    out_dir, docs_dir = Path(out_dir), Path(docs_dir)
    results = collect_results(plan, out_dir)
    asset_dir = docs_dir / "reproduction"
    asset_dir.mkdir(parents=True, exist_ok=True)
    write_results_csv(results, asset_dir / "results.csv")
    n_runs = len(plan.runs(out_dir))
    with_paper = _has_paper_numbers(plan)
    title = "Reproduction at small scale: study" if with_paper else "Study"
    lines = [f"# {title} `{plan.name}`", "",
             f"Generated by `envconv study --report` from the run directories in `{_as_given(out_dir)}`. "
             f"Every number below is read from those files; all rows are in "
             f"[reproduction/results.csv](reproduction/results.csv). "
             + ("The paper's numbers are ResNet-50 on ImageNet (Kobayashi 2023, Table 1), so only the direction "
                "and size of differences compare. " if with_paper else "")
             + "The verdicts come first; the setup (plan, seeds, machines, commands) is at the end.", ""]
    lines += _claims_section(plan, results, asset_dir, docs_dir)
    lines += ["## Tables", ""]
    for table in _table_names(plan):
        lines += _table_section(plan, results, table, asset_dir, docs_dir)
    if plan.probe:
        lines += _probe_section(plan, results, asset_dir, docs_dir)
    lines += _sigma_section(plan, results, asset_dir, docs_dir)
    lines += _sigma_movement_section(plan, results, asset_dir, docs_dir)
    lines += _sigma_scale_section(plan, results, asset_dir, docs_dir)
    lines += _test_scale_section(plan, results, asset_dir, docs_dir)
    lines += _setup_section(plan, results, out_dir, docs_dir, n_runs)
    atomic_write_bytes("\n".join(lines).encode(), docs_dir / "reproduction.md")
    return {"results": results, "markdown": docs_dir / "reproduction.md", "csv": asset_dir / "results.csv"}
