"""Compare MLflow runs side by side: the params that differ, the metrics, and a PNG of curves and bars.

    stepcode compare RUN_ID RUN_ID [RUN_ID ...] [--metric reward --metric cruxeval.pass_at_1] [--out compare.png]

Works on any runs of the store: stages of the Prefect flow, `dvc exp run` stages, study arms. The PNG has one panel
per metric: a line per run for metrics logged over steps (training curves), bars for metrics logged once
(benchmark scores). It is saved locally and logged as an artifact of every compared run, under `comparisons/`.

"Why do these runs differ" by digest: the datasets whose DVC md5 differs (`dvc.md5.<role>` tags; a pipeline run:
its stage runs', as `stage.role`), the params sections whose digest differs (`params.digest.<section>`, logged by a
pipeline run; a stage run: its pipeline run's) and, from each run's `lineage/params.yaml`, the keys that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
        for key, values in sorted(self.metrics.items()):
            rows.append([f"metric {key}", *["-" if v is None else f"{v:.4g}" for v in values]])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


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
    metric_keys = metrics or sorted(set().union(*(r.data.metrics for r in runs)))
    last = {k: [r.data.metrics.get(k) for r in runs] for k in metric_keys}
    histories = {}
    for k in metric_keys:
        per_run = [[(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)] for r in runs]
        if any(len(h) > 1 for h in per_run):
            histories[k] = per_run
    datasets, sections, files = _digests(client, runs)
    return Comparison(list(run_ids), names, differing, last, histories, datasets, sections, files)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in comparison.metrics if any(v is not None for v in comparison.metrics[k])][:max_panels]
    cols = min(3, max(1, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    labels = [f"{n} ({r[:6]})" for n, r in zip(comparison.names, comparison.run_ids)]
    for ax, key in zip(axes.flat, keys):
        if key in comparison.histories:
            for label, hist in zip(labels, comparison.histories[key]):
                if hist:
                    steps, values = zip(*sorted(hist))
                    ax.plot(steps, values, label=label, marker="." if len(hist) < 30 else None)
            ax.set_xlabel("step")
        else:
            values = [v if v is not None else 0.0 for v in comparison.metrics[key]]
            ax.bar(range(len(values)), values, color=[f"C{i}" for i in range(len(values))])
            ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    curve_axes = [ax for ax, key in zip(axes.flat, keys) if key in comparison.histories]
    if curve_axes:
        curve_axes[0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
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
