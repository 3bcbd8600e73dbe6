"""`stepcode score` and `stepcode evaluate`: benchmark scoring with the official semantics (stepcode/evals).

    stepcode score --benchmark cruxeval --task output generations.json -o scored.json
    stepcode score --benchmark cruxeval --task input gens.json --skip-rule false --samples sample_1,sample_7
    stepcode score --benchmark lcb --task output raw_completions.json --extract direct
    stepcode score --benchmark cruxeval --task output generations/ -o scored/   # a folder: one Prefect task per file
    stepcode evaluate --model models/run --benchmarks cruxeval,lcb --limit 3 --prompt official -o eval/
    stepcode evaluate --suite paper --model models/run --limit 20 -o eval/suite        # the paper's Table 2 + 6
    stepcode evaluate --suite paper --endpoint http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-Coder-7B-Instruct

A folder (or an fsspec URL of one: s3://bucket/gens with s3fs installed) is scored by flows/score.py: every file
matching --glob (default **/*.json, subfolders too; *.scored.json results left out) is one task on the params' task
runner (orchestration.task_runner: process | dask), all in one flow run; -o DIR gets <name>.scored.json per file (the
single-file format) and summary.json, and the table is printed. A file that cannot be scored (bad JSON: file:line)
is an error row while the others are scored; the command then ends with one error line and exit 2.

The choices come from the benchmark registry (stepcode/evals/registry.py). A registered benchmark a command cannot
run (`stepcode score --benchmark reval`: REval is scored by its own protocol in `stepcode evaluate`) is refused in
one line that names what to run instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from stepcode.commands.common import (
    ParamsOpt,
    check_output,
    check_params_workers,
    check_profile,
    fail,
    load_json,
    load_params,
    require_exists,
    require_file,
    split_choices,
    writing,
)
from stepcode.evals import EXTRACT_MODES
from stepcode.evals.benchmark import GENERATE, SCORE
from stepcode.evals.generate import DECODING_PRESETS, PROMPTS, endpoint_label, open_backend, with_decoding
from stepcode.evals.registry import BENCHMARKS, REGISTRY, get, names
from stepcode.evals.scoring import SKIP_RULES
from stepcode.evals.suite import SUITES

BENCHMARK_NAMES = tuple(BENCHMARKS)
TASKS = tuple(dict.fromkeys(t for n in names(SCORE) for t in BENCHMARKS[n]))   # output, input: the scorable ones
STEPCODE_NAMES = tuple(n for n, b in REGISTRY.items() if b.stepcode_tasks)       # cruxeval, lcb
SUITE_NAMES = tuple(SUITES)
FOLDER_GLOB = "**/*.json"   # flows/score.py's GLOB (not imported: that module imports Prefect)
_TASK_HELP = "; ".join(f"{n}: {'|'.join(BENCHMARKS[n])}" for n in names(SCORE))
_NOT_GENERATED = ", ".join(n for n in BENCHMARK_NAMES if n not in names(GENERATE))
_NOT_SCORED = ", ".join(n for n in BENCHMARK_NAMES if n not in names(SCORE))


def _benchmark_list(value: str | None) -> str | None:
    if value is not None:
        split_choices(value, BENCHMARK_NAMES, "--benchmarks")
    return value


def register(app: typer.Typer) -> None:
    @app.command()
    def score(generations: str = typer.Argument(..., help='generations JSON: {"sample_<k>": list of strings}; or a '
                                                 'folder of them (a path or an fsspec URL: s3://bucket/gens), every '
                                                 '--glob file scored as one Prefect task, one result file each'),
              benchmark: Literal[BENCHMARK_NAMES] = typer.Option(..., "--benchmark", help="the benchmark"
                                                                 + (f" (not scored here yet: {_NOT_SCORED})"
                                                                    if _NOT_SCORED else "")),
              task: Literal[TASKS] = typer.Option(..., "--task", help=f"the task ({_TASK_HELP})"),
              out: Optional[str] = typer.Option(None, "-o", "--out", help="write the official result JSON here; for "
                                                "a folder: a folder (or URL) for <name>.scored.json per file and "
                                                "summary.json"),
              skip_rule: Optional[Literal[SKIP_RULES]] = typer.Option(
                  None, "--skip-rule", help="copied-input rule: drop (CRUXEval default) | false (older CRUXEval "
                                            "files) | lcb (LiveCodeBench default)"),
              samples: Optional[str] = typer.Option(
                  None, "--samples", help="comma-separated ids to score (default: every benchmark problem, and the "
                                          "file must have them all)"),
              extract: Literal[EXTRACT_MODES] = typer.Option(
                  "none", "--extract", help="none: the strings are extracted predictions (official generations.json"
                                            " / raw_generations); direct | cot: raw model text, extract first"),
              glob: str = typer.Option(FOLDER_GLOB, "--glob", help="for a folder: which files are generations "
                                       "(relative to it; the results of this command, *.scored.json, never are)"),
              params_path: Path = ParamsOpt):
        """Score predictions by execution in the sandbox; write the official result format; print pass@1/pass@5."""
        from stepcode.evals import score_file

        bench = get(benchmark)
        try:
            bench.require(SCORE)
        except ValueError as e:
            fail(str(e))
        try:
            bench.check_task(task)
        except ValueError as e:
            fail(f"--task: {e}")
        params = load_params(params_path)
        check_params_workers(params, params_path, hash_seeds=1)
        chosen = [s.strip() for s in samples.split(",") if s.strip()] if samples else None
        if "://" in generations or Path(generations).is_dir():
            _score_folder(generations, benchmark, task, out, params_path, glob, skip_rule=skip_rule, samples=chosen,
                          extract=extract)
            return
        if glob != FOLDER_GLOB:
            fail(f"--glob chooses files in a folder; GENERATIONS {generations} is a file")
        generations, out = Path(generations), (Path(out) if out is not None else None)
        load_json(generations, "GENERATIONS")   # readable JSON, else one line naming file:line (read again below)
        check_output(out, "-o")
        try:
            with writing("-o", out):
                result = score_file(benchmark, task, generations, out, params, skip_rule=skip_rule,
                                    samples=chosen, extract=extract, progress=True)
        except (ValueError, TypeError, FileNotFoundError) as e:
            fail(str(e))
        n = len(result["raw_scored_generations"])
        typer.echo(f"{benchmark}-{task}: {n} samples, skip rule {result['skip_rule']}")
        typer.echo(f"pass@1: {result['pass_at_1']:.2f}  pass@5: {result['pass_at_5']:.2f}")
        if out:
            typer.echo(f"wrote {out}")

    def _score_folder(generations: str, benchmark: str, task: str, out: Optional[str], params_path: Path,
                      glob: str, **options) -> None:
        """`stepcode score` on a folder: flows/score.py's flow on the params' task runner; a table, summary.json."""
        from stepcode.commands.pipeline import prefect_env

        prefect_env(Path.cwd())   # before Prefect is imported: it reads its settings then
        from flows.score import as_url, is_folder, list_generations, run_score_folder, table

        if out is not None and "://" in out:
            import fsspec

            try:
                fsspec.core.url_to_fs(out)
            except (ImportError, ValueError) as e:   # an unknown protocol, its package (s3fs, gcsfs) not installed
                fail(f"-o {out}: {' '.join(str(e).split())}")
        try:
            if "://" in generations and not is_folder(generations):
                fail(f"GENERATIONS {generations}: no such folder (a URL names a folder of generations files; score "
                     "one file from a local path)")
            local_out = out is not None and ("://" not in out or out.startswith("file://"))
            if local_out:
                check_output(Path(out.removeprefix("file://")), "-o", directory=True)
            names, left = list_generations(as_url(generations), glob, as_url(out) if out is not None else None)
        except (ImportError, ValueError, OSError) as e:   # fsspec: an unknown protocol, s3fs not installed, no access
            fail(f"GENERATIONS {generations}: {' '.join(str(e).split())}")
        if not names:
            fail(f"GENERATIONS {generations}: no generations files in this folder (--glob {glob!r}"
                 + (f"; left out {len(left)} result file(s) *.scored.json or under -o)" if left else ")"))
        typer.echo(f"{benchmark}-{task}: {len(names)} generations file(s) in {generations}"
                   + (f" (left out {len(left)}: results of this command)" if left else ""), err=True)
        try:
            with writing("-o", Path(out) if out is not None and "://" not in out else None):
                summary = run_score_folder(generations, benchmark, task, out, params_path=str(params_path),
                                           root=".", pattern=glob, echo=True, **options)
        except (ValueError, TypeError, FileNotFoundError) as e:
            fail(str(e))
        typer.echo(table(summary))
        if out is not None:
            typer.echo(f"wrote {summary['scored']} result file(s) and summary.json in {out} "
                       f"({summary['seconds']:.1f} s)")
        if summary["failed"]:
            first = next(r["error"] for r in summary["files"] if "error" in r)
            fail(f"{summary['failed']} of {len(summary['files'])} generations file(s) not scored, the other "
                 f"{summary['scored']} were" + (f" ({out}/summary.json has every row)" if out is not None else "")
                 + f"; first: {first}")

    @app.command()
    def evaluate(model: str = typer.Option(..., "--model", help="local Hugging Face model folder; with --endpoint, "
                                           "the served model's name"),
                 endpoint: Optional[str] = typer.Option(None, "--endpoint", help="an OpenAI-compatible server's "
                                                        "base URL (e.g. http://127.0.0.1:8000/v1 of `vllm serve`)"),
                 concurrency: int = typer.Option(8, "--concurrency", min=1, help="requests in flight (--endpoint)"),
                 suite: Optional[Literal[SUITE_NAMES]] = typer.Option(
                     None, "--suite", help="paper: every benchmark x task of the paper's Table 2 with both prompt "
                                           "styles, Table 6's step accuracy, one table and one MLflow run"),
                 benchmarks: Optional[str] = typer.Option(None, "--benchmarks", callback=_benchmark_list,
                                                          help=f"comma-separated, some of: {', '.join(BENCHMARK_NAMES)}"
                                                          " (default cruxeval,lcb)"
                                                          + (f" (not runnable here yet: {_NOT_GENERATED})"
                                                             if _NOT_GENERATED else "")),
                 limit: Optional[int] = typer.Option(None, "--limit", min=1, help="only the first N problems of "
                                                     "each (REval: programs)"),
                 prompt: Optional[Literal[PROMPTS]] = typer.Option(
                     None, "--prompt", help="official (default): the benchmark's own prompt; stepcode: our "
                                            f"instrumented task ({', '.join(STEPCODE_NAMES)})"),
                 decoding: Optional[Literal[DECODING_PRESETS]] = typer.Option(
                     None, "--decoding", help="paper: one greedy completion (T = 0), the paper's protocol (default "
                                              "with --suite); cruxeval: evaluate.n samples at each of "
                                              "evaluate.temperatures, pass@1 and pass@5 (default otherwise)"),
                 out: Path = typer.Option(Path("eval"), "-o", "--out", help="output folder"),
                 heldout: Optional[Path] = typer.Option(None, "--heldout", help="also the held-out RL rows "
                                                        "(in-distribution, greedy): final/step accuracy, gap"),
                 heldout_limit: Optional[int] = typer.Option(None, "--heldout-limit", min=1,
                                                             help="first N held-out rows"),
                 baseline: Optional[Path] = typer.Option(None, "--baseline", help="also this model (e.g. the "
                                                         "SFT checkpoint) on the same held-out rows, same decoding: "
                                                         "baseline.heldout.* metrics"),
                 profile: Optional[str] = typer.Option(None, "--profile", help="held-out rows of this training "
                                                       "profile's sources only (train.profiles.NAME.sources)"),
                 max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1,
                                                              help="generation cap (default: evaluate.max_new_tokens)"),
                 register_as: Optional[str] = typer.Option(None, "--register", help="register the model under "
                                                           "this name in the MLflow registry, with its metrics"),
                 params_path: Path = ParamsOpt):
        """Generate with the model, extract, score in the sandbox; write generations, scored files, metrics.json.
        Logged to MLflow as the `evaluate` stage (metrics, per-row table, generations as artifacts); --suite logs
        one run with a nested run per benchmark."""
        from stepcode.pipeline import stages

        if suite:
            for given, option in ((benchmarks, "--benchmarks"), (prompt, "--prompt"), (heldout, "--heldout"),
                                  (baseline, "--baseline"), (register_as, "--register")):
                if given is not None:
                    fail(f"--suite {suite} runs its own benchmarks with both prompt styles; drop {option}")
        prompt = prompt or "official"
        chosen_names = split_choices(benchmarks or "cruxeval,lcb", BENCHMARK_NAMES, "--benchmarks")
        for name in () if suite else chosen_names:   # the rules of generate.check_request, checked up front
            try:
                get(name).require(GENERATE)
            except ValueError as e:
                fail(f"--benchmarks {name}: {e}")
        lacking = [n for n in chosen_names if n not in STEPCODE_NAMES]
        if prompt == "stepcode" and lacking:
            able = " and ".join(get(n).title for n in STEPCODE_NAMES)
            fail(f"--prompt stepcode runs on {able} programs only; drop {', '.join(lacking)} from --benchmarks")
        params = load_params(params_path)
        check_params_workers(params, params_path, hash_seeds=1)
        if endpoint is None:
            require_exists(Path(model), "--model")   # config.json: checked by the stage, after the benchmark files
        if heldout is not None:
            require_file(heldout, "--heldout", "write it with `stepcode build`")
        elif baseline is not None:
            fail("--baseline compares on the held-out rows: give --heldout too")
        if baseline is not None:
            require_exists(baseline, "--baseline")
        sources = check_profile(profile, params_path).train.get(profile).sources if profile else None
        check_output(out, "-o", directory=True)
        params = with_decoding(params, decoding or ("paper" if suite else None), max_new_tokens)
        try:
            backend = open_backend(model, endpoint, concurrency=concurrency) if endpoint or suite else None
            with writing("-o", out):
                if suite:
                    metrics = stages.evaluate_suite(params, suite, out, backend=backend,
                                                    model=endpoint_label(model, endpoint), limit=limit)
                else:
                    metrics = stages.evaluate(params, model, out, heldout=heldout, benchmarks=chosen_names,
                                              prompt=prompt, limit=limit, heldout_limit=heldout_limit,
                                              baseline=baseline, sources=sources, backend=backend)
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
        if register_as:
            version = stages.register(params, model, metrics, name=register_as)
            typer.echo(f"registered {register_as} v{version.version}")
        if suite:
            typer.echo((out / "table.md").read_text())
            typer.echo(f"wrote {out}/table.md, {out}/table.html, {out}/metrics.json")
            return
        for key, value in metrics.items():
            typer.echo(f"{key:48s} {value:8.2f}")
        typer.echo(f"wrote {out}/metrics.json")
