"""The public API as a pipeline author writes it: type-checked (``mypy --strict``), never run.

``tests/test_typing.py`` checks that this file is clean, so a change that breaks the types a
user relies on (a step decorator that loses the function, a retry that returns ``Any``, an
``atomic_write`` that forgets its mode) fails the tests. ``assert_type`` marks where the
exact type matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any, NoReturn, assert_type

import stalwart
import stalwart.testing
from stalwart.instrumentation import Event, MetricsSink, RetryScheduled, StepFailed

# -- options: keyword-only, plain floats for seconds -------------------------------------------

POLICY = stalwart.RetryPolicy(attempts=4, initial=0.5, maximum=10.0, deadline=60.0)
assert_type(POLICY.attempts, int)
assert_type(POLICY.deadline, float)
assert_type(POLICY.backoff(2), float)

CLIENT = stalwart.HttpClient(
    timeout=20.0,
    retry=POLICY,
    headers={"Authorization": "Bearer not-a-real-token"},
    base_url="https://api.example.com",
)

# -- alerts and metrics: anything with send(alert) / handle(event) -----------------------------


class PagerAlerter:
    """A custom alerter: any object with ``send(alert)`` will do."""

    def __init__(self) -> None:
        self.pages: list[str] = []

    def send(self, alert: stalwart.Alert) -> None:
        assert_type(alert.attempts, int)
        assert_type(alert.dead_letter_id, str | None)
        self.pages.append(alert.as_text())


class RetryCounter:
    """A custom metrics sink: any object with ``handle(event)`` will do."""

    def __init__(self) -> None:
        self.retries: dict[str, int] = {}
        self.failed: list[str] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, RetryScheduled):
            assert_type(event.wait_s, float)
            self.retries[event.step] = self.retries.get(event.step, 0) + 1
        elif isinstance(event, StepFailed):
            self.failed.append(f"{event.step}: {event.error_type}")


ALERTERS: list[stalwart.Alerter] = [
    PagerAlerter(),
    stalwart.SlackWebhook("https://hooks.slack.com/services/T0/B0/x", timeout=5.0),
]
SINKS: list[MetricsSink] = [RetryCounter()]

pipeline = stalwart.Pipeline(
    "daily-report", root="/var/lib/stalwart", http=CLIENT, alerters=ALERTERS, metrics=SINKS
)
assert_type(pipeline.root, Path)

# -- retries around the unit that is safe to repeat --------------------------------------------


@stalwart.retry(policy=POLICY)
def read_sensor(channel: int) -> float:
    if channel < 0:
        raise stalwart.Permanent(f"no channel {channel}")
    raise stalwart.Transient("sensor busy")


@stalwart.retry
async def fetch_rates(currency: str) -> dict[str, float]:
    await asyncio.sleep(0)
    return {currency: 1.0}


assert_type(read_sensor(3), float)


async def rates_now() -> dict[str, float]:
    rates = await assert_type(fetch_rates("EUR"), Coroutine[Any, Any, dict[str, float]])
    assert_type(rates, dict[str, float])
    return rates


# -- steps -------------------------------------------------------------------------------------


@pipeline.step()
def fetch(ctx: stalwart.Context) -> None:
    orders = ctx.http.get("https://api.example.com/orders", params={"day": ctx.run_id}).json()
    assert_type(orders, Any)
    assert_type(ctx.write_json("orders.json", orders), str)
    ctx.log.info("fetched orders", extra={"rows": len(orders)})


@pipeline.step(retry=stalwart.RetryPolicy(attempts=2))
def transform(ctx: stalwart.Context) -> None:
    orders = ctx.read_json("orders.json")
    with ctx.atomic_write("report.csv") as text:
        assert_type(text, IO[str])
        text.write("id,amount\n")
        for order in orders:
            text.write(f"{order['id']},{order['amount']}\n")
    with ctx.atomic_write("report.bin", "wb") as binary:
        assert_type(binary, IO[bytes])
        binary.write(b"\x00\x01")
    ctx.write_text("rates.json", str(asyncio.run(rates_now())))
    ctx.write_bytes("sensor.txt", str(read_sensor(1)).encode())


@pipeline.step(name="upload")
def upload_report(ctx: stalwart.Context) -> None:
    response = ctx.http.post(
        "https://sink.example.com/reports",
        content=ctx.read_bytes("report.csv"),
        idempotency_key=f"report-{ctx.run_id}",
        dead_letter=True,
    )
    assert_type(response.status_code, int)


@pipeline.map(
    items=lambda ctx: ctx.read_json("orders.json"),
    key=lambda order: str(order["id"]),
    workers=4,
    retry=stalwart.RetryPolicy(attempts=3),
    max_failures=10,
)
def fetch_order(ctx: stalwart.ItemContext, order: dict[str, Any]) -> None:
    assert_type(ctx.key, str)
    ctx.write_json(
        f"orders/{ctx.key}.json", ctx.http.get(f"https://api.example.com/{ctx.key}").json()
    )


@pipeline.step
def audit(ctx: stalwart.Context) -> int:
    """A step may return a value (it is ignored); the decorator keeps the function as it is."""
    return len(ctx.outputs)


def audit_again(ctx: stalwart.Context) -> int:
    """Both decorator forms give back the function itself, callable as before."""
    assert_type(fetch(ctx), None)
    return assert_type(audit(ctx), int)


# -- files outside a pipeline: atomic helpers --------------------------------------------------


def export(directory: Path) -> None:
    stalwart.atomic_write_text(directory / "a.txt", "hello\n")
    stalwart.atomic_write_bytes(directory / "b.bin", b"\x00")
    stalwart.atomic_write_json(directory / "c.json", {"ok": True})
    with stalwart.atomic_write(directory / "d.txt") as text:
        assert_type(text, IO[str])
        text.write("streamed\n")
    with stalwart.atomic_write(directory / "e.bin", "wb") as binary:
        assert_type(binary, IO[bytes])
        binary.write(b"streamed")


# -- running, and looking at what a run left behind --------------------------------------------


def run_today() -> stalwart.RunResult:
    result = pipeline.run(run_id="2026-11-28", from_step="transform")
    assert_type(result.ran, tuple[str, ...])
    assert_type(result.duration_s, float)
    assert_type(result.run_dir, Path)
    return result


def inspect(run_id: str) -> list[str]:
    store: stalwart.CheckpointStore = pipeline.checkpoints(run_id)
    assert_type(store.is_done("fetch"), bool)
    marker = store.read_marker("fetch")
    assert_type(marker, stalwart.Marker | None)
    if marker is None:
        return []
    assert_type(marker.attempts, int)
    assert_type(marker.duration_s, float)
    return [o.name for o in marker.outputs]


def pending_dead_letters() -> list[str]:
    letters = stalwart.DeadLetterStore(pipeline.state_dir / "deadletter")
    rows = [row.id for row in letters.list() if row.state == "pending"]
    for envelope_id in rows:
        replayed = letters.replay(envelope_id, client=CLIENT)
        assert_type(replayed, stalwart.Response)
    return rows


def classify(exc: BaseException) -> str:
    if isinstance(exc, stalwart.HttpStatusError):
        assert_type(exc.status, int)
        assert_type(exc.dead_letter_id, str | None)
    if isinstance(exc, stalwart.StalwartError):
        return type(exc).__name__
    return "transient" if stalwart.is_transient(exc) else "permanent"


# -- testing it --------------------------------------------------------------------------------


def check_upload_is_retried() -> None:
    """What a test of this pipeline (in the user's test_*.py) does."""
    alerter = stalwart.testing.RecordingAlerter()
    metrics = stalwart.testing.MemoryMetrics()
    with stalwart.testing.FlakyServer() as server:
        server.fail_then("POST", "/reports", 2, status=503)
        server.route("GET", "/orders", stalwart.testing.Reply(json=[{"id": 1, "amount": 2.5}]))
        assert_type(server.url("/reports"), str)
        under_test = stalwart.Pipeline("t", root="/tmp/t", alerters=[alerter], metrics=[metrics])
        under_test.step(name="fetch")(fetch)
        with stalwart.testing.no_wait() as waits:
            assert_type(waits, stalwart.testing.WaitRecorder)
            under_test.run(run_id="t")
        assert_type(waits.waits, list[float])
        assert_type(server.count("POST", "/reports"), int)
    assert_type(metrics.retries(step="upload"), int)
    assert_type(metrics.events_of(RetryScheduled), list[RetryScheduled])
    assert_type(alerter.last, stalwart.Alert)


def main() -> NoReturn:
    pipeline.main()


if __name__ == "__main__":
    main()


def http_options_are_typed(ctx: stalwart.Context) -> None:
    """The verbs take ``request``'s keyword options, checked (a typo is an error)."""
    ctx.http.get("http://api/x", params={"a": 1}, timeout=3.0, retry=stalwart.RetryPolicy())
    ctx.http.post("http://api/x", json={"a": 1}, idempotency_key="k", dead_letter=True)
