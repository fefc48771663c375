"""``stalwart demo``: the reference pipeline against a local flaky API, twice.

Run 1 sees the orders API fail twice (503) and the report sink rate-limit once (429 with
Retry-After), retries through both, and succeeds; run 2 skips every step. ``--fail STEP``
makes a step raise (the alert goes to a local receiver that prints the Slack payload, unless
SLACK_WEBHOOK_URL is set) and exits 1; ``--interrupt STEP`` shows Ctrl-C: exit 130, no alert.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._context import Context, Step
from .._pipeline import Pipeline

__all__ = ["find_example", "run_demo"]

ORDERS = [
    {"id": 1000 + i, "customer": name, "amount": amount}
    for i, (name, amount) in enumerate(
        [
            ("acme", 120.5),
            ("globex", 75.0),
            ("initech", 310.25),
            ("umbrella", 42.0),
            ("hooli", 99.99),
        ]
    )
]


def find_example() -> Path:
    """The reference pipeline: the copy shipped in the wheel, else the source tree's."""
    package = Path(__file__).resolve().parents[1]  # src/stalwart (this is src/stalwart/cli)
    for candidate in (
        package / "_examples" / "daily_report.py",
        package.parents[1] / "examples" / "daily_report.py",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("the reference pipeline examples/daily_report.py is not installed")


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _sabotage(pipeline: Pipeline, step_name: str, make: Callable[[], BaseException]) -> None:
    for index, step in enumerate(pipeline.steps):
        if step.name == step_name:

            def broken(ctx: Context) -> None:
                raise make()

            pipeline.steps[index] = Step(step.name, broken, step.retry)
            return
    raise SystemExit(
        f"stalwart demo: no step {step_name!r} (steps: {', '.join(pipeline.step_names)})"
    )


def _banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def run_demo(args: argparse.Namespace, run_cli: Callable[..., int]) -> int:
    """The demo; ``run_cli`` is the command line it drives (handed down: the demo is a
    command of the command line, and does not import it back)."""
    from ..testing import FlakyServer, Reply  # noqa: PLC0415
    from ._load import load_pipeline  # noqa: PLC0415

    root = args.root or tempfile.mkdtemp(prefix="stalwart-demo-")
    real_webhook = os.environ.get("SLACK_WEBHOOK_URL", "")
    with FlakyServer() as server:
        server.route(
            "GET",
            "/orders",
            [
                Reply(status=503, body="upstream busy"),
                Reply(status=503, body="upstream busy"),
                Reply(json=ORDERS),
            ],
        )
        server.route(
            "POST",
            "/reports",
            [
                Reply(status=429, headers={"Retry-After": "1"}, body="slow down"),
                Reply(status=201, json={"stored": True}),
            ],
        )
        server.route("POST", "/slack", Reply(status=200, body="ok"))
        env = {
            "DAILY_REPORT_API": server.url("").rstrip("/"),
            "DAILY_REPORT_SINK": server.url("").rstrip("/"),
            "STALWART_ROOT": root,
            "SLACK_WEBHOOK_URL": real_webhook or server.url("/slack"),
        }
        with _environ(**env):
            example = find_example()
            pipeline = load_pipeline(f"{example}:pipeline")
            argv = ["run", "--run-id", "demo", "--log-format", args.log_format] + (
                ["--verbose"] if args.verbose else []
            )
            print(
                f"stalwart demo: {example} against a flaky local API at {env['DAILY_REPORT_API']}"
            )
            print(f"state directory: {root}")
            if args.fail or args.interrupt:
                if args.fail:
                    _sabotage(
                        pipeline,
                        args.fail,
                        lambda: ValueError(f"demo: {args.fail} broke on purpose"),
                    )
                    _banner(f"a run whose step {args.fail} raises ValueError (permanent: no retry)")
                else:
                    _sabotage(pipeline, args.interrupt, KeyboardInterrupt)
                    _banner(f"a run interrupted (Ctrl-C) inside step {args.interrupt}")
                code = run_cli(argv, pipeline=pipeline)
                _show_alerts(server, real_webhook)
                print(f"\nexit code: {code}")
                return code
            _banner("run 1: the API fails twice (503), the sink rate-limits once (429)")
            first = run_cli(argv, pipeline=pipeline)
            if first != 0:
                return first
            _banner("run 2: same run ID: every step is already done")
            second = run_cli(argv, pipeline=pipeline)
            _banner("status")
            run_cli(["status", "--run-id", "demo"], pipeline=pipeline)
            report = Path(root) / "daily-report" / "runs" / "demo" / "report.csv"
            print(f"\nreport: {report}\n{report.read_text(encoding='utf-8')}", end="")
            print(f"requests the flaky API saw: {len(server.requests)}")
            return second


def _show_alerts(server: Any, real_webhook: str) -> None:
    if real_webhook:
        print("(alerts went to your SLACK_WEBHOOK_URL)")
        return
    alerts = server.requests_for("POST", "/slack")
    if not alerts:
        print("\nno alert was sent")
    for request in alerts:
        print("\nSlack payload received by the local webhook receiver:")
        print(json.dumps(json.loads(request.body), indent=2))
