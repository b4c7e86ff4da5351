"""With tracing on, one run's spans share the trace id started by its HTTP request, across
every service hop (the context travels only in the `traceparent` NATS header)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.core import tracing
from services.core.natsd import NatsServer
from tests.support.gitrepo import make_origin
from tests.support.stack import inprocess_stack, submit, wait_run


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable("zloth-test", exporter)
    try:
        yield exporter
    finally:
        tracing.disable()


async def test_spans_of_one_run_share_the_request_trace(
    nats_server: NatsServer, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    origin = make_origin(tmp_path / "origin", files=3, commits=1)
    async with inprocess_stack(nats_server.url, tmp_path / "data") as client:
        accepted = await submit(client, origin, ["demo-a"], "Trace me")
        run_id = accepted["runs"][0]["id"]
        await wait_run(client, run_id, {"succeeded"})
    finished = spans.get_finished_spans()
    post = [s for s in finished if s.name.startswith("HTTP POST") and s.name.endswith("/runs")]
    assert len(post) == 1
    trace_id = post[0].context.trace_id
    in_trace = [s for s in finished if s.context.trace_id == trace_id]
    services = {s.attributes.get("zloth.service") for s in in_trace if s.attributes}
    assert {"scheduler", "workspace-manager", "executor-runner"} <= services
    assert any(s.name == "agent run" for s in in_trace)
    assert any(s.name == "handle sched-start" for s in in_trace)


def test_disabled_tracing_does_nothing() -> None:
    assert not tracing.enabled()
    headers: dict[str, str] = {}
    tracing.inject(headers)
    with tracing.span("x", headers):
        pass
    assert headers == {}
