"""The pipeline's default ``HttpClient`` (no ``http=`` given) is shared by the runs in flight
and closed by the last one to end."""

from __future__ import annotations

import threading
from pathlib import Path

import stalwart
from stalwart.testing import FlakyServer, Reply


def test_two_runs_of_one_pipeline_in_threads_share_the_default_client(root: Path) -> None:
    with FlakyServer() as server:
        server.route("GET", "/x", Reply(json=[1]))
        pipeline = stalwart.Pipeline("t", root=root, alerters=[])
        inside = threading.Barrier(2)

        @pipeline.step()
        def get(ctx: stalwart.Context) -> None:
            inside.wait(timeout=30)  # both runs are inside their step
            ctx.write_json("x.json", ctx.http.get(server.url("/x")).json())

        errors: list[BaseException] = []

        def run(run_id: str) -> None:
            try:
                pipeline.run(run_id=run_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(f"r{i}",)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert server.count("GET", "/x") == 2
        assert pipeline._http._client is None  # the last run to end closed it
