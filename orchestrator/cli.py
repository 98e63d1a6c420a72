"""`unlearn`: a thin command line over the library. Each command parses, calls one function, prints.

Bad input of any kind (an argument, a config key, a file that is not there) is one line on stderr and exit code 2,
before anything expensive: torch, transformers and Ray are imported only by the commands that run models, so
`unlearn --help`, `unlearn methods` and a config error answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence


class _Progress:
    """Timestamped progress lines on stderr, so stdout stays for results."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.config import parse_override

    out: dict[str, Any] = {}
    if getattr(args, "method", None):
        out["method.name"] = args.method
        out["method.hparams"] = {}
    for key in ("workers", "deepspeed"):
        if getattr(args, key, None) is not None:
            out[f"train.{key}"] = getattr(args, key)
    if getattr(args, "output", None):
        out["output_dir"] = args.output
    if getattr(args, "address", None):
        out["ray.address"] = args.address
    for item in getattr(args, "set", None) or []:
        key, value = parse_override(item)
        out[key] = value
    return out


def _load(args: argparse.Namespace):
    from orchestrator.config import load_config

    config = load_config(args.config)
    overrides = _overrides(args)
    return config.with_overrides(**overrides) if overrides else config


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)  # before the imports below: a config error answers without torch, transformers or Ray
    from orchestrator.run.checks import check_method_fits_model

    check_method_fits_model(config)  # so does a method that names a part the model lacks (the tiny shape is known)
    from orchestrator.observe.report import text_table
    from orchestrator.run.unlearning import run_unlearning

    result = run_unlearning(config, run_name=args.run_name, progress=_Progress())
    summary = result.to_dict()
    print(f"\n{result.method} on {result.forget_size} forget examples, {result.world_size} worker(s), "
          f"{result.seconds:.0f} s\n")
    print(text_table(summary))
    print(f"\nsummary: {Path(result.output_dir) / 'summary.json'}\nreport:  {Path(result.output_dir) / 'report.md'}"
          f"\nmodel:   {result.model_dir}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config or args.set or args.output or args.address:
            raise ValueError("--resume DIR takes the sweep's own saved config; give no config, --set or --output")
        if not Path(args.resume).is_dir():
            raise FileNotFoundError(f"sweep folder not found: {args.resume}")
    else:
        from orchestrator.config import parse_config
        from orchestrator.sweep.config import DEFAULT_SWEEP_EXPERIMENT

        output, args.output = args.output, None  # the sweep's folder, not the (unused) run output_dir
        if args.config:
            config = _load(args)
        else:
            config = parse_config(DEFAULT_SWEEP_EXPERIMENT, source="embedded sweep")
            config = config.with_overrides(**_overrides(args)) if _overrides(args) else config
        if config.sweep is None:
            raise ValueError(f"{args.config}: no `sweep:` section (see experiments/sweep_default.yaml)")
        if output:
            config = config.with_overrides(**{"sweep.output_dir": output})
    from orchestrator.sweep.driver import check_sweep, resume_sweep, run_sweep  # torch- and Ray-free

    if not args.resume:
        check_sweep(config)

    result = resume_sweep(args.resume, progress=_Progress()) if args.resume else run_sweep(config, progress=_Progress())
    rob, timing = result.summary["robustness"], result.summary["timing"]
    print(f"\n{sum(result.summary['status'].values())} trials ({result.summary['status']}), wall "
          f"{timing['wall_seconds_total']:.0f} s, wall / (train+eval / slots) = {timing['wall_over_ideal']}\n")
    print(f"{'method':<10} {'best':>6} {'near best':>9} {'seed spread':>11} {'tunability':>10} {'hypervolume':>11}")
    for method, r in rob.items():
        print(f"{method:<10} {_num(r['best']):>6} {_num(r['near_best']):>9} {_num(r['seed_spread_mean']):>11} "
              f"{_num(r['tunability']):>10} {_num(r['hypervolume']):>11}")
    print(f"\nsummary: {result.summary_path}\nreport:  {result.report_path}")
    return 0


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def cmd_stream(args: argparse.Namespace) -> int:
    config = _load(args)
    from orchestrator.stream.driver import run_stream, stream_config  # torch- and Ray-free until it runs

    stream_config(config, args.requests, True if args.follow else None)  # a bad `stream:` answers here
    result = run_stream(config, requests=args.requests, follow=True if args.follow else None, progress=_Progress())
    print(f"\nstream of {len(result.methods)} method(s) in {result.seconds:.0f} s\n")
    for row in result.summary["drift_table"]:
        drift = row["drift_final"]
        print(f"{row['method']:>10}: {row['applied']} applied, {row['rolled_back']} rolled back, "
              f"{row['quarantined']} quarantined; drift after the last "
              f"{'-' if drift is None else f'{drift:+.4f}'}")
    print(f"\nsummary: {result.summary_path}\nreport:  {result.report_path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from orchestrator.config import load_config

    model = Path(args.model)
    if not model.is_dir():
        raise FileNotFoundError(f"model folder not found: {args.model}")
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (model / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{args.model} is not a saved model with its tokenizer (no {', '.join(missing)}); "
                                "pass a run's model/ folder")
    config = load_config(args.config)
    from orchestrator.data.tokenize import PromptTemplate
    from orchestrator.models.loading import load_tokenizer
    from orchestrator.run.prepare import evaluate_dir, eval_settings, load_data

    data = load_data(config.data)
    report = evaluate_dir(args.model, load_tokenizer(args.model), data, PromptTemplate(),
                          eval_settings(config.eval, config.data.max_length))
    print(json.dumps(report.summary, indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from orchestrator.observe.report import rerender

    print(rerender(args.run_dir))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    config = _load(args)
    from orchestrator.models.plan import plan_memory

    plan = plan_memory(config, device_memory_gib=args.device_memory)
    print(plan.table())
    if not plan.fits:
        print(f"unlearn plan: does not fit: {plan.reason}", file=sys.stderr)
        return 2
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    import methods

    for name in methods.available_methods():
        print(name)
        for field, (default, help_text) in methods.hyperparameter_help(name).items():
            print(f"  {field} = {default!r}  {help_text}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block it prints by default buries the line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"unlearn: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unlearn", description="Make a language model forget, on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one unlearning job: target model + forget data + method -> model + report")
    run.add_argument("config", nargs="?", help="experiment YAML (default: the embedded tiny default)")
    run.add_argument("--method", help="method name (its paper-default hyperparameters)")
    run.add_argument("--output", help="output folder")
    run.add_argument("--workers", type=int, help="Ray Train workers")
    run.add_argument("--deepspeed", help="DeepSpeed JSON config")
    run.add_argument("--address", help="Ray cluster address to join")
    run.add_argument("--run-name", help="name of the run's Ray Train state: started again under it, a run resumes "
                     "from its last checkpoint (default: derived from the config)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=1e-4")
    run.set_defaults(func=cmd_run)

    sw = sub.add_parser("sweep", help="Ray Tune over methods and hyperparameters -> trade-off fronts, robustness "
                        "report, plots")
    sw.add_argument("config", nargs="?", help="experiment YAML with a `sweep:` section (default: the embedded "
                    "sweep, experiments/sweep_default.yaml)")
    sw.add_argument("--resume", metavar="DIR", help="restore an interrupted sweep from its folder (Tuner.restore); "
                    "finished trials are not run again")
    sw.add_argument("--output", help="sweep folder (sweep.output_dir)")
    sw.add_argument("--address", help="Ray cluster address to join")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. "
                    "sweep.max_concurrent=2")
    sw.set_defaults(func=cmd_sweep)

    st = sub.add_parser("stream", help="replay sequential forget requests on one resident model, each applied "
                        "exactly once (resumes after a crash), with drift and resurgence")
    st.add_argument("config", nargs="?", help="experiment YAML with a `stream:` section (default: the embedded "
                    "default with a synthetic stream; see experiments/stream_default.yaml)")
    st.add_argument("--requests", help="JSONL file of requests (sets stream.source: file)")
    st.add_argument("--follow", action="store_true", help="keep reading the requests file as lines are appended")
    st.add_argument("--output", help="output folder (default runs/<name>-stream)")
    st.add_argument("--workers", type=int, help="Ray Train workers")
    st.add_argument("--address", help="Ray cluster address to join")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. "
                    "stream.policy.mode=coalesce")
    st.set_defaults(func=cmd_stream)

    ev = sub.add_parser("eval", help="the metrics alone, for a model folder")
    ev.add_argument("model", help="HF model folder (with its tokenizer)")
    ev.add_argument("config", nargs="?", help="experiment YAML naming the data (default: embedded default)")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="re-render a run folder's report")
    rep.add_argument("run_dir")
    rep.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="per-worker memory of a run, and whether it fits (exit 2 when it does not)")
    plan.add_argument("config", nargs="?", help="experiment YAML (default: the embedded tiny default)")
    plan.add_argument("--workers", type=int, help="Ray Train workers")
    plan.add_argument("--deepspeed", help="DeepSpeed JSON config")
    plan.add_argument("--device-memory", type=float, metavar="GIB",
                      help="memory of one worker's device in GiB (default: 80 on GPU, the machine's RAM on CPU)")
    plan.set_defaults(func=cmd_plan)

    met = sub.add_parser("methods", help="list the methods and their hyperparameters")
    met.set_defaults(func=cmd_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    args = build_parser().parse_args(argv)
    try:
        from orchestrator.observe.progress import progress_mode

        progress_mode()  # a bad RAY_UNLEARN_PROGRESS answers now, not after Ray and the models are up
        return args.func(args)
    except Exception as err:
        if not _is_user_error(err):
            raise
        print(f"unlearn: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearn: interrupted", file=sys.stderr)
        return 130


def _is_user_error(err: Exception) -> bool:
    """Errors that mean "the input is wrong" (ConfigError and MethodConfigError are ValueErrors), and a failed run."""
    from orchestrator.errors import RunError

    return isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, RunError))


def _one_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return " ".join(line.strip() for line in lines) if lines else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
