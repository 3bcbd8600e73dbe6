"""What a pipeline run says about itself, from its outcome (the dict `flows.pipeline.pipeline` returns and
reports/pipeline-<profile>.json holds), so every place says the same numbers:

    summarize_outcome(outcome)              # the CLI's summary lines (`stepcode pipeline`)
    stage_lines("sft", outcome)             # one stage's lines: the flow logs them to Prefect as each stage ends
    flow_run_label(params, "micro", when)   # the Prefect flow run: "micro grpo=bilevel params=3f9a1c 2026-12-06 18:40"
    run_label("micro", when)                # the MLflow parent run: "micro 2026-12-06 18:40"
    run_params(params, "micro")             # the parent run's params: what tells pipeline runs apart
    pipeline_markdown(outcome, title=..., links=...)   # the flow run's markdown artifact (Prefect UI, Artifacts)

All pure: no MLflow, no Prefect.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

STAGES = ("trace", "validate", "build", "sft", "grpo", "evaluate")
# The evaluate metrics the summary shows: held-out and benchmark headline scores (not per-task breakdowns).
HEADLINE_SUFFIXES = ("final_acc", "step_acc", "pass_at_1", "step_accuracy")


def headline_keys(metrics: dict) -> list[str]:
    return [k for k in metrics if k.endswith(HEADLINE_SUFFIXES) and k.count(".") <= 1]


def stage_lines(stage: str, outcome: dict) -> list[str]:
    """The summary's lines for one stage (none if it did not run)."""
    if stage not in outcome:
        return []
    s = outcome[stage]
    if stage == "trace":
        return [f"trace     {s['total']} programs: " + ", ".join(f"{k} {v}" for k, v in s["by_status"].items())]
    if stage == "validate":
        return [f"validate  gate passed on {s['rows']} rows"]
    if stage == "build":
        return ["build     " + ", ".join(f"{k} {v}" for k, v in s.get("files", {}).items())]
    if stage in ("sft", "grpo"):
        last = s.get("last_log", {})
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("loss", "reward", "stepcode/final_accuracy",
                                                          "stepcode/step_accuracy") if k in last)
        return [f"{stage:9s} {s['steps']} steps in {s['seconds']:.0f} s" + (f" ({shown})" if shown else "")]
    if stage == "evaluate":
        return ["evaluate  " + ", ".join(f"{k}={s[k]:.3g}" for k in headline_keys(s))]
    return []


def summarize_outcome(outcome: dict) -> str:
    """A few lines per stage from the flow's outcome (the full JSON goes to reports/)."""
    lines = [line for stage in STAGES for line in stage_lines(stage, outcome)]
    if "learning" in outcome:
        from stepcode.pipeline.learning import learning_lines

        lines += learning_lines(outcome["learning"], outcome.get("evaluate", {}).get("heldout.rows"))
    if outcome.get("dvc_recorded"):
        lines.append(f"dvc       recorded {', '.join(outcome['dvc_recorded'])} "
                     "(cache + dvc.lock; `dvc status` to check)")
    lines += lineage_lines(outcome.get("dvc_push") or {}, outcome.get("lineage") or {})
    if "model" in outcome:
        lines.append(f"model     registered {outcome['model']['name']} v{outcome['model']['version']} "
                     f"(MLflow run {outcome.get('mlflow_run_id')})")
    return "\n".join(lines)


def lineage_lines(push: dict, lineage: dict) -> list[str]:
    """What the run pushed and what it points at: the DVC remote, its commit (dirty or not), how to get it back."""
    lines = []
    if push.get("state") == "pushed":
        lines.append(f"dvc       pushed to remote {push.get('remote', '?')}: {push['transferred']} new object(s)")
    elif push.get("state") == "off":
        lines.append("dvc       not pushed (params tracking.dvc_push: false): the data are in the local cache only")
    elif push.get("state") == "failed":
        lines.append(f"warning   {push['warning']}")
    if lineage.get("warning"):
        lines.append(f"warning   {lineage['warning']}")
    if lineage.get("run_id"):
        run_id, commit = lineage["run_id"], (lineage.get("git_commit") or "unknown")[:10]
        if lineage.get("git_dirty") and lineage.get("dirty_files") == "params.yaml":
            lines.append(f"lineage   run {run_id} at git {commit} + uncommitted changes (params.yaml; logged with the "
                         f"run, so `stepcode reproduce {run_id}` uses it)")
        elif lineage.get("git_dirty"):
            lines.append(f"lineage   run {run_id} at git {commit} + uncommitted changes ({lineage['dirty_files']}): "
                         "the commit may not hold the code that ran; commit, then run again to make it reproducible")
        else:
            lines.append(f"lineage   run {run_id} at git {commit} (clean tree): "
                         f"`stepcode lineage fetch {run_id} -o DIR`, `stepcode reproduce {run_id}`")
        if lineage.get("missing_on_remote"):
            lines.append(f"warning   the DVC remote lacks {len(lineage['missing_on_remote'])} dataset(s) the run "
                         f"logged ({', '.join(lineage['missing_on_remote'][:6])}): `dvc push`")
    return lines


# --- names and params ---------------------------------------------------------------------------------------------

def _when(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M")


def run_label(profile: str, when: datetime) -> str:
    """The MLflow parent run's name: `<profile> <date>` (its `stage` tag stays `pipeline`)."""
    return f"{profile} {_when(when)}"


def flow_run_label(params, profile: str | None, when: datetime, stop_after: str | None = None) -> str:
    """The Prefect flow run's name: the profile, the GRPO mode (or where the run stops, if before GRPO), the first 6
    characters of the params hash (the MLflow runs' `params.hash` tag) and the date."""
    from stepcode.tracking.lineage import params_hash

    name = profile or params.train.profile
    if stop_after in (None, "grpo"):
        what = f"grpo={params.pipeline.grpo_mode}" + (" stop-after=grpo" if stop_after else "")
    else:
        what = f"stop-after={stop_after}"
    return f"{name} {what} params={params_hash(params)[:6]} {_when(when)}"


def run_about(params, profile: str | None, when: datetime, stop_after: str | None = None) -> str:
    """One line on what the run was: the first line of its markdown artifact (the flow run's name, spelled out)."""
    from stepcode.tracking.lineage import params_hash

    return (f"Profile **{profile or params.train.profile}** · GRPO mode **{params.pipeline.grpo_mode}** · params hash "
            f"`{params_hash(params)}` (the MLflow runs' `params.hash` tag) · started {_when(when)}"
            + (f" · stopped after **{stop_after}**" if stop_after else ""))


# The parent run's params: what tells one pipeline run from another, not every key of params.yaml (that file is
# logged whole with the run: lineage/params.yaml). Profile keys that do not change results are left out.
PIPELINE_KEYS = ("grpo_mode", "eval_benchmarks", "eval_prompt", "eval_greedy", "eval_max_new_tokens", "eval_limit",
                 "heldout_limit", "model_name")
BUILD_KEYS = ("input_task", "reasoning", "reasoning_by_source", "heldout_fraction", "rl_fraction", "decontam_n",
              "decontam_min_coverage")
PROFILE_SKIP = ("report_to", "logging_steps", "save_steps")


def _param_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _flatten(prefix: str, section: dict) -> dict:
    """One level of nesting (a profile's `sft` and `grpo` sections) into dotted keys."""
    out = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update({f"{prefix}.{key}.{k}": v for k, v in value.items()})
        else:
            out[f"{prefix}.{key}"] = value
    return out


def run_params(params, profile: str | None, stop_after: str | None = None) -> dict[str, str]:
    """The pipeline parent run's params (about 55): `train.profile`, the profile's keys as `profile.*`
    (`profile.sft.max_steps`, `profile.grpo.lam`, ...), the pipeline's (`pipeline.grpo_mode`, the evaluation
    options), `trace.*` and the dataset's `build.*` options; `pipeline.stop_after` when the run stops early."""
    name = profile or params.train.profile
    prof = params.train.get(name).model_dump(mode="json")
    out: dict = {"train.profile": name}
    out.update(_flatten("profile", {k: v for k, v in prof.items() if k not in PROFILE_SKIP}))
    dumped = params.model_dump(mode="json", by_alias=True)
    out.update({f"pipeline.{k}": dumped["pipeline"][k] for k in PIPELINE_KEYS})
    if stop_after:
        out["pipeline.stop_after"] = stop_after
    out.update({f"trace.{k}": v for k, v in dumped["trace"].items()})
    out.update({f"build.{k}": dumped["build"][k] for k in BUILD_KEYS})
    return {k: _param_value(v)[:500] for k, v in out.items()}


# --- the flow run's markdown artifact -----------------------------------------------------------------------------

@dataclass
class RunLinks:
    """Where the run's MLflow runs are: the tracking URI, the experiment, the parent run, each stage's run."""
    tracking_uri: str
    experiment_id: str
    parent_id: str
    parent_name: str
    stages: dict[str, str] = field(default_factory=dict)   # stage tag -> run id (this flow run's stage runs)
    experiment_name: str = ""

    @property
    def server(self) -> str | None:
        """The MLflow UI to link to: the tracking server, or the one `mlflow ui` starts on a local store."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return self.tracking_uri.rstrip("/")
        return None

    def url(self, run_id: str) -> str:
        base = self.server or "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def link(self, text: str, run_id: str) -> str:
        return f"[{text}]({self.url(run_id)}) `{run_id}`"

    def short_link(self, run_id: str) -> str:
        """The run's id, shortened as the MLflow UI does, linking to it (keeps a table narrow)."""
        return f"[{run_id[:8]}]({self.url(run_id)})"


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _learning_table(outcome: dict) -> list[str]:
    learning = outcome["learning"]
    rows = outcome.get("evaluate", {}).get("heldout.rows")
    n = f"{rows:.0f} held-out rows" if rows else "held-out rows"
    out = ["## Did RL move the model?", "",
           f"| {n}, greedy | SFT | RL (GRPO) | change |", "|---|---:|---:|---:|"]
    for what, key in (("step accuracy", "step_acc"), ("final accuracy", "final_acc")):
        sft, rl = learning[f"sft_heldout_{key}"], learning[f"rl_heldout_{key}"]
        out.append(f"| {what} | {_pct(sft)} | {_pct(rl)} | {(rl - sft) * 100:+.1f} points |")
    out += ["", f"GRPO mean reward **{learning['grpo_reward_mean']:.3f}** (of 1); "
                f"**{learning['grpo_zero_std_fraction']:.0%}** of prompt groups without signal (all rollouts "
                "rewarded alike, so GRPO learns nothing from them).", ""]
    from stepcode.pipeline.learning import learning_lines

    verdict = learning_lines(learning, rows)[1].strip()
    out += [f"> {verdict}", ""]
    return out


def _benchmark_table(metrics: dict) -> list[str]:
    """One row per benchmark task: its headline scores (`<name>_pass_at_1`, from the first decoding run; the
    per-decoding copies `<name>_<decoding>_pass_at_1` are named in the last column, not repeated)."""
    names = [k[:-len("_pass_at_1")] for k in headline_keys(metrics) if k.endswith("_pass_at_1")
             and f"{k[:-len('_pass_at_1')]}_problems" in metrics]
    if not names:
        return []
    out = ["## Benchmarks", "", "| benchmark (metric prefix) | pass@1 (%) | step accuracy (%) | problems | decoding |",
           "|---|---:|---:|---:|---|"]
    for name in names:
        step = metrics.get(f"{name}_step_accuracy")
        runs = [k[len(name) + 1:-len("_pass_at_1")] for k in metrics
                if k.startswith(f"{name}_") and k.endswith("_pass_at_1") and f"{k[:-len('_pass_at_1')]}_problems"
                not in metrics]
        out.append(f"| `{name}` | {metrics[f'{name}_pass_at_1']:.3g} | {'' if step is None else f'{step:.3g}'} | "
                   f"{metrics[f'{name}_problems']:.0f} | {', '.join(runs)} |")
    return out + [""]


def _stage_table(outcome: dict, links: RunLinks | None, cached: set[str]) -> list[str]:
    out = ["## Stages", "", "| stage | result | MLflow run |", "|---|---|---|"]
    for stage in (*STAGES[:3], "init-model", *STAGES[3:], "register"):
        if stage != "init-model" and ("model" if stage == "register" else stage) not in outcome \
                and links and stage in links.stages:
            result = "did not finish (its MLflow run has the error)"
        elif stage == "init-model":
            if not (links and stage in links.stages) and stage not in cached:
                continue
            result = "a from-scratch base model and its tokenizer (the profile names no model)"
        elif stage == "register":
            if "model" not in outcome:
                continue
            result = f"{outcome['model']['name']} v{outcome['model']['version']} (alias `candidate`)"
        elif stage == "evaluate":
            if stage not in outcome:
                continue
            result = "held-out and benchmark scores above"
        else:
            lines = stage_lines(stage, outcome)
            if not lines:
                continue
            result = lines[0][len(stage):].strip() if lines[0].startswith(stage) else lines[0]
        if links and stage in links.stages:
            where = links.short_link(links.stages[stage])
        elif stage in cached:
            where = "cached"
        else:
            where = ""
        out.append(f"| {stage} | {result.replace('|', '/')} | {where} |")
    if cached:
        out += ["", "*cached*: Prefect reused an earlier run's result (same inputs, params and code), so this run has "
                "no MLflow run of its own for that stage: the earlier run's is in MLflow."]
    return out + [""]


def pipeline_markdown(outcome: dict, *, about: str = "", links: RunLinks | None = None,
                      cached: set[str] = frozenset(), error: str | None = None) -> str:
    """The flow run's summary for the Prefect UI: what the run was (`about`: `run_about`), SFT vs RL on the held-out
    rows, the benchmark scores, one row per stage with its MLflow run, the registered model, the lineage, and where
    the MLflow runs are. (The page shows the flow run's name above it: the artifact's description.)"""
    out = [about, ""] if about else []
    if error:
        out += ["**The run failed:**", "", "```", *error.splitlines(), "```", ""]
    if "learning" in outcome:
        out += _learning_table(outcome)
    if "evaluate" in outcome:
        out += _benchmark_table(outcome["evaluate"])
    out += _stage_table(outcome, links, cached)
    if "model" in outcome:
        m = outcome["model"]
        out += ["## Model", "", f"Registered **{m['name']} v{m['version']}** in the MLflow model registry "
                f"(`models:/{m['name']}/{m['version']}`), alias `candidate`.", ""]
    tail = [line for line in summarize_outcome({k: outcome[k] for k in ("dvc_recorded", "dvc_push", "lineage")
                                                if k in outcome}).splitlines()]
    if tail:   # the CLI's lines, as a list (a code block would hide the long commands behind a scroll bar)
        out += ["## Data and lineage", ""]
        for line in tail:
            head, _, rest = line.partition(" ")
            out.append(f"- **{head}** {rest.strip()}")
        out.append("")
    if links:
        experiment = f"`{links.experiment_name}` (id {links.experiment_id})" if links.experiment_name else \
            links.experiment_id
        out += ["## MLflow", "",
                f"Pipeline run: {links.link(links.parent_name, links.parent_id)}, experiment {experiment}; each "
                "stage's run is linked in the table above.", ""]
        if not links.server:
            out += [f"The tracking store is `{links.tracking_uri}` (no server), so the links work once an MLflow UI "
                    f"runs on it: in the project folder, `mlflow ui --backend-store-uri {links.tracking_uri}`.", ""]
    elif not error:
        out += ["MLflow tracking is off (params `tracking.enabled: false`): no runs to link.", ""]
    return "\n".join(out)
