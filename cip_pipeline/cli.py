"""The `cip` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cip_pipeline.months import parse_month
from cip_pipeline.paths import data_dir


def _months(text: str) -> list[str]:
    try:
        months = [parse_month(m) for m in text.split(",") if m.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not months:
        raise argparse.ArgumentTypeError("no month given (e.g. 2019-10,2019-11)")
    return sorted(set(months))


def _count(text: str) -> int:
    try:
        value = int(float(text))
    except (ValueError, OverflowError) as exc:  # OverflowError: inf
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from exc
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port: {value} (1 to 65535)")
    return value


def cmd_generate(args: argparse.Namespace) -> int:
    from cip_pipeline.generator import generate

    out = args.out or data_dir() / "raw"
    report = generate(args.events, seed=args.seed, months=args.months, out=out, compress=args.gzip)
    for path, (month, rows) in zip(report.files, report.rows.items(), strict=True):
        print(f"{month}  {rows:>12,} rows  {path}")
    print(f"{sum(report.rows.values()):,} rows in {report.seconds:.1f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from cip_pipeline.runner import run_pipeline

    return run_pipeline(args.months)


def cmd_bench(args: argparse.Namespace) -> int:
    from cip_pipeline.bench import run_bench, to_markdown, write_report

    report = run_bench(args.events, seed=args.seed, repeat=args.repeat, refresh=args.refresh)
    print(to_markdown(report))
    json_path, md_path = write_report(report)
    print(f"written: {json_path} and {md_path}")
    return 1 if report.failures else 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from cip_pipeline.runner import ensure_instance

    ensure_instance()  # sets DAGSTER_HOME to the project's and writes its dagster.yaml
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    # This interpreter's Dagster, not whichever `dagster` comes first on PATH (if any).
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace)]
    os.execv(command[0], [*command, "-h", args.host, "-p", str(args.port)])
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from cip_pipeline.dashboard.launch import measure, serve

    if args.measure:
        return measure(repeat=args.repeat)
    return serve(args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cip", description="Customer Intelligence Platform")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="write REES46-format sample files, one per month")
    gen.add_argument(
        "--events",
        type=_count,
        required=True,
        help="about how many rows in all (1e6 and 110000000 are accepted)",
    )
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument(
        "--months",
        type=_months,
        default=["2019-10", "2019-11"],
        help="comma-separated, e.g. 2019-10,2019-11 (the default)",
    )
    gen.add_argument(
        "--out", type=Path, default=None, help="output folder (default: $CIP_DATA_DIR/raw)"
    )
    gen.add_argument("--gzip", action="store_true", help="write .csv.gz")
    gen.set_defaults(func=cmd_generate)

    run = sub.add_parser("run", help="materialize every asset the raw files allow")
    run.add_argument(
        "--months",
        type=_months,
        default=None,
        help="comma-separated months (default: every month in $CIP_DATA_DIR/raw)",
    )
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="time the whole pipeline per asset (wall, rows/s, RSS)")
    bench.add_argument("--events", type=_count, required=True, help="e.g. 1e6, 1e7, 1.1e8")
    bench.add_argument("--seed", type=int, default=42)
    bench.add_argument("--repeat", type=_count, default=1, help="runs; reports median and range")
    bench.add_argument(
        "--refresh",
        action="store_true",
        help="also time the nightly case: the newest month and its dependents",
    )
    bench.set_defaults(func=cmd_bench)

    ui = sub.add_parser("ui", help="the Dagster UI on the project's Dagster home")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=_port, default=3000)
    ui.set_defaults(func=cmd_ui)

    dash = sub.add_parser(
        "dashboard",
        help="the analytics dashboard over the warehouse, read-only (needs the dashboard extra)",
    )
    dash.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)"
    )
    dash.add_argument("--port", type=_port, default=8501)
    dash.add_argument(
        "--measure",
        action="store_true",
        help="instead of serving, time each page's render (cold and warm caches) and print it",
    )
    dash.add_argument("--repeat", type=_count, default=1, help="with --measure: best of N")
    dash.set_defaults(func=cmd_dashboard)
    return parser


def _one_run_at_a_time() -> None:
    """`cip run` and `cip bench` execute their runs one after another in this process, so the
    process is the only run: it gets every core (the budget's split among concurrent runs is
    for runs the daemon launches, and stays so in the instance's dagster.yaml)."""
    import os

    from cip_pipeline.budget import SOLE_RUN_ENV, available_cores

    os.environ[SOLE_RUN_ENV] = "1"
    if "polars" not in sys.modules:  # Polars reads this once, when it is first imported
        os.environ["POLARS_MAX_THREADS"] = str(available_cores())


def main(argv: Sequence[str] | None = None) -> int:
    from cip_pipeline.budget import Budget

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        Budget.from_env()
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the message, like a bad argument
    if args.command in ("run", "bench"):
        _one_run_at_a_time()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
