"""Compare MLflow runs side by side: the params that differ, the metrics, and a PNG of curves and bars.

    stepcode compare RUN_ID RUN_ID [RUN_ID ...] [--metric reward --metric cruxeval.pass_at_1] [--out compare.png]

Works on any runs of the store: stages of the Prefect flow, `dvc exp run` stages, study arms. The table lists the
metrics that differ first, in natural order (anchors.2 before anchors.10), then the ones every run has the same, on
one line; `system/*` metrics (sampled while a stage ran) are counted, not listed, unless asked for with --metric.
Values carry the unit the reports use: held-out accuracies, shares and ratios (fractions in MLflow) as percent,
benchmark pass@k and step accuracy (percent already) as they are, differences of fractions (`gap`) in percentage
points, times in seconds. The PNG has one panel per metric that differs (or per --metric): a line per run for
metrics logged over steps (training curves), bars with their values for metrics logged once (benchmark scores),
and one legend naming each run by name, id and the params it differs in. It is saved locally and logged as an
artifact of every compared run, under `comparisons/`.

"Why do these runs differ" by digest: the datasets whose DVC md5 differs (`dvc.md5.<role>` tags; a pipeline run:
its stage runs', as `stage.role`), the params sections whose digest differs (`params.digest.<section>`, logged by a
pipeline run; a stage run: its pipeline run's) and, from each run's `lineage/params.yaml`, the keys that differ.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PREFIX = "system/"      # MLflow system metrics: they differ between any two runs, so they are not compared


def natural_key(name: str) -> list:
    """Sort key: digit runs compare as numbers (anchors.2 < anchors.10)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


# Units, by metric name, as the reports show them (pipeline summary, suite tables, study report).
_PERCENT_ALREADY = re.compile(r"pass_at_\d+$|(?<![/.])step_accuracy$|(^|[./])reval_")   # benchmark scores: 0-100
_FRACTION = re.compile(r"(^|_)(acc|accuracy)$|fraction|^frac_|share$|ratio")        # 0-1, shown as percent
_SECONDS = re.compile(r"(^|_)seconds$|^step_time$|_runtime$")


def unit(key: str) -> tuple[float, str]:
    """(scale, unit) of a metric for display: `value * scale` in `unit` ("%", "pts" for percentage points, "s", or
    "" for a count or a score)."""
    last = re.split(r"[./]", key)[-1]
    if _PERCENT_ALREADY.search(key):
        return 1.0, "%"
    if last == "gap":                       # final_acc - step_acc: fractions, so their difference in points
        return 100.0, "pts"
    if _FRACTION.search(last) or key.startswith("clip_ratio/"):
        return 100.0, "%"
    if _SECONDS.search(last):
        return 1.0, "s"
    return 1.0, ""


def show(key: str, value: float | None) -> str:
    """A metric value as the reports show it (`unit`); "-" when the run has none."""
    if value is None:
        return "-"
    scale, suffix = unit(key)
    v = value * scale
    if suffix == "%":
        return f"{v:.1f}%"
    if suffix == "pts":
        return f"{v:+.1f} pts"
    text = f"{int(v)}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:.4g}"
    return f"{text} s" if suffix == "s" else text


@dataclass
class Comparison:
    run_ids: list[str]
    names: list[str]
    params_differing: dict[str, list[str | None]]
    metrics: dict[str, list[float | None]]
    histories: dict[str, list[list[tuple[int, float]]]]
    datasets_differing: dict[str, list[str | None]] = field(default_factory=dict)   # role -> md5 per run
    sections_differing: dict[str, list[str | None]] = field(default_factory=dict)   # params section -> digest
    params_file_differing: dict[str, list] = field(default_factory=dict)            # key -> value, lineage/params.yaml
    requested: bool = False          # the metrics were named (--metric): shown and plotted as asked, in that order

    def _differs(self, key: str) -> bool:
        values = self.metrics[key]
        return len({repr(v) for v in values}) > 1 or (
            key in self.histories and len({repr(sorted(h)) for h in self.histories[key]}) > 1)

    @property
    def differing(self) -> list[str]:
        """The metrics whose last value (or history) is not the same in every run (a missing one differs), in
        natural order; the named ones, in their order, when the metrics were named."""
        if self.requested:
            return list(self.metrics)
        return sorted((k for k in self.metrics if not k.startswith(SYSTEM_PREFIX) and self._differs(k)),
                      key=natural_key)

    @property
    def same(self) -> list[str]:
        """The metrics every run has with the same value (and history), in natural order."""
        if self.requested:
            return []
        return sorted((k for k in self.metrics if not k.startswith(SYSTEM_PREFIX) and not self._differs(k)),
                      key=natural_key)

    @property
    def system(self) -> list[str]:
        return [] if self.requested else sorted(k for k in self.metrics if k.startswith(SYSTEM_PREFIX))

    def labels(self, width: int = 60) -> list[str]:
        """Each run as a reader tells them apart: its name and id, then the params it differs in (a few)."""
        # what the runs were asked to do: params.yaml keys first (a run param may be a path that differs anyway);
        # where they logged (tracking.*: a store, a folder) only when nothing else differs
        differing = {**self.params_differing, **self.params_file_differing}   # a stage logs its section as params
        keys = sorted(differing, key=lambda k: (k not in self.params_file_differing, natural_key(k)))
        keys = ([k for k in keys if not k.startswith("tracking.")] or keys)[:3]
        labels = []
        for i, (name, run_id) in enumerate(zip(self.names, self.run_ids)):
            what = ", ".join(f"{k}={'-' if differing[k][i] is None else differing[k][i]}" for k in keys)
            label = f"{name} ({run_id[:8]})" + (f": {what}" if what else "")
            labels.append(label if len(label) <= width else label[:width - 1] + "…")
        return labels

    def why(self) -> str:
        """One line: what differs between the runs, by digest."""
        parts = []
        if self.datasets_differing:   # roles holding the same data in every run (trace.traces = build.traces): once
            groups: dict[str, list[str]] = {}
            for role, values in sorted(self.datasets_differing.items()):
                groups.setdefault(repr(values), []).append(role)
            parts.append("datasets " + ", ".join(" = ".join(roles) for roles in groups.values()))
        if self.sections_differing:
            parts.append("params " + ", ".join(sorted(self.sections_differing)))
        return "differ in: " + "; ".join(parts) if parts else "same datasets and params digests"

    def table(self) -> str:
        """A plain-text table: datasets and params that differ (by digest, then by value), then metrics."""
        head = ["", *[f"{n} ({r[:8]})" for n, r in zip(self.names, self.run_ids)]]
        rows = [head]
        for key, values in sorted(self.datasets_differing.items()):
            rows.append([f"dataset {key}", *["-" if v is None else v[:12] for v in values]])
        for key, values in sorted(self.sections_differing.items()):
            rows.append([f"params {key}", *["-" if v is None else v for v in values]])
        for key, values in sorted(self.params_file_differing.items()):
            rows.append([f"params.yaml {key}", *["-" if v is None else str(v)[:40] for v in values]])
        for key, values in sorted(self.params_differing.items()):
            rows.append([f"param {key}", *["-" if v is None else str(v)[:40] for v in values]])
        for key in self.differing:
            rows.append([f"metric {key}", *[show(key, v) for v in self.metrics[key]]])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if not self.requested and not self.differing:
            lines.append("no metric differs")
        if self.same:
            same = ", ".join(f"{k} {show(k, self.metrics[k][0])}" for k in self.same)
            lines += textwrap.wrap(f"the same in every run ({len(self.same)} metrics): {same}", 118,
                                   subsequent_indent="  ", break_on_hyphens=False)
        if self.system:
            lines.append(f"system metrics left out ({len(self.system)}, sampled while the runs ran): name one with "
                         f"--metric, e.g. --metric {self.system[0]}")
        return "\n".join(lines)


def compare_runs(run_ids: list[str], metrics: list[str] | None = None, client=None) -> Comparison:
    if client is None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
    runs = [client.get_run(r) for r in run_ids]
    names = [r.data.tags.get("mlflow.runName", r.info.run_id[:8]) for r in runs]
    keys = sorted(set().union(*(r.data.params for r in runs)))
    differing = {}
    for k in keys:
        values = [r.data.params.get(k) for r in runs]
        if len(set(values)) > 1:
            differing[k] = values
    metric_keys = metrics or sorted(set().union(*(r.data.metrics for r in runs)), key=natural_key)
    last = {k: [r.data.metrics.get(k) for r in runs] for k in metric_keys}
    histories = {}
    for k in metric_keys:
        if k.startswith(SYSTEM_PREFIX) and not metrics:   # not compared (see Comparison.system): not read either
            continue
        per_run = [[(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)] for r in runs]
        if any(len(h) > 1 for h in per_run):
            histories[k] = per_run
    datasets, sections, files = _digests(client, runs)
    return Comparison(list(run_ids), names, differing, last, histories, datasets, sections, files,
                      requested=bool(metrics))


def _digests(client, runs) -> tuple[dict, dict, dict]:
    """The datasets, params sections and params-file keys that differ across `runs` (see the module docstring)."""
    import yaml

    from stepcode.tracking.digests import differing, flatten
    from stepcode.tracking.runs import PARENT_TAG, artifact_text, logged_datasets

    datasets = differing([{r: d.md5 for r, d in logged_datasets(client, run).items()} for run in runs])
    owners = []
    for run in runs:   # the run that logged the params: itself (a pipeline run) or its pipeline run
        parent = run.data.tags.get(PARENT_TAG)
        if not any(k.startswith("params.digest.") for k in run.data.tags) and parent:
            run = client.get_run(parent)
        owners.append(run)
    sections = differing([{k[len("params.digest."):]: v for k, v in run.data.tags.items()
                           if k.startswith("params.digest.")} for run in owners])
    files = {}
    if sections:
        texts = [artifact_text(client, run.info.run_id, "lineage/params.yaml") for run in owners]
        if all(t is not None for t in texts):
            flat = [flatten(yaml.safe_load(t) or {}) for t in texts]
            files = {k: v for k, v in differing(flat).items() if k.split(".")[0] in sections}
    return datasets, sections, files


def plot(comparison: Comparison, out: str | Path, max_panels: int = 12) -> Path:
    """The PNG: one panel per metric that differs (or per named metric), in the table's order, at most
    `max_panels`; values in the reports' units (`unit`); one legend for the runs. With no metric differing, a
    figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    wanted = [k for k in comparison.differing if any(v is not None for v in comparison.metrics[k])]
    keys = wanted[:max_panels]
    cols = min(3, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    labels = comparison.labels()
    ncol = 2 if len(labels) == 2 else 1
    header = 0.45 + 0.22 * -(-len(labels) // ncol)          # inches: the title, then the legend's rows
    width = max(5.0 * cols, 8.0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.2 * rows + header), squeeze=False)
    colors = [f"C{i}" for i in range(len(labels))]
    for ax, key in zip(axes.flat, keys):
        scale, suffix = unit(key)
        if key in comparison.histories:
            for color, hist in zip(colors, comparison.histories[key]):
                if hist:
                    steps, values = zip(*sorted(hist))
                    ax.plot(steps, [v * scale for v in values], color=color, marker="." if len(hist) < 30 else None)
            ax.set_xlabel("step", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            values = comparison.metrics[key]
            heights = [0.0 if v is None else v * scale for v in values]
            bars = ax.bar(range(len(values)), heights, color=colors)
            ax.bar_label(bars, labels=["not logged" if v is None else show(key, v) for v in values], fontsize=8,
                         padding=2)
            ax.set_xticks(range(len(values)), [r[:8] for r in comparison.run_ids], fontsize=7)
            top = max([abs(h) for h in heights] + [0.0])
            low = min(heights + [0.0])
            ax.set_ylim(low * 1.2, top * 1.2 if top > 0 else 1.0)   # room for the labels; all zero: 0 at the bottom
        ax.set_title("\n".join(textwrap.wrap(key, 42, break_on_hyphens=False)), fontsize=9)
        if suffix:
            ax.set_ylabel({"%": "percent", "pts": "percentage points", "s": "seconds"}[suffix], fontsize=8)
        ax.tick_params(labelsize=7)
        if isinstance(ax.yaxis.get_major_formatter(), ScalarFormatter):
            ax.ticklabel_format(axis="y", useOffset=False)     # 6.9157, not "+6.915" over 0.0007
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if not keys:
        axes.flat[0].text(0.5, 0.5, "no metric differs between these runs" if not comparison.requested else
                          "none of the named metrics was logged by these runs", ha="center", va="center", fontsize=11)
    if comparison.requested:
        title = f"the {len(keys)} named metric{'s' if len(keys) != 1 else ''} these runs logged"
    elif len(wanted) > len(keys):
        title = f"{len(keys)} of the {len(wanted)} metrics that differ (the table lists all)"
    else:
        title = f"the {len(keys)} metric{'s that differ' if len(keys) != 1 else ' that differs'}"
    if comparison.same:
        title += f"; {len(comparison.same)} more are the same in every run"
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    fig.legend(handles=[Patch(color=c, label=label) for c, label in zip(colors, labels)], loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.36 / height), ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.subplots_adjust(top=1 - (header + 0.35) / height)      # the panels' titles below the header
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, metadata={"Title": title, "Description": "panels: " + ", ".join(keys)})
    plt.close(fig)
    return out


def compare(run_ids: list[str], metrics: list[str] | None, out: str | Path, log_artifact: bool = True) -> Comparison:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    comparison = compare_runs(run_ids, metrics, client)
    png = plot(comparison, out)
    if log_artifact:
        for run_id in run_ids:
            client.log_artifact(run_id, str(png), artifact_path="comparisons")
    return comparison
