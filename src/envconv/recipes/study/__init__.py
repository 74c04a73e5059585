"""``envconv study``: the paper's comparisons re-run as a grid of seeded runs, resumable, with a report.

* :mod:`~envconv.recipes.study.plan`: the YAML plan (entries x seeds over one base config) and its checks;
* :mod:`~envconv.recipes.study.runner`: trains, evaluates and probes every run that is not finished;
* :mod:`~envconv.recipes.study.report`: ``results.csv``, ``reproduction.md`` and plots from the run directories;
* :mod:`~envconv.recipes.study.stats`: mean / std over seeds and paired differences with 95% intervals.
"""

from .plan import Plan, load_plan
from .report import collect_results, write_report
from .runner import dry_run, run_study

__all__ = ["Plan", "load_plan", "run_study", "dry_run", "write_report", "collect_results"]
