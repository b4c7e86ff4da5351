"""Optional OpenTelemetry tracing: a trace starts at an HTTP request and continues through
every NATS hop in the `traceparent` header, into each handler (and the agent run).

Off unless `ZLOTH_TRACING=1` and the `tracing` extra is installed; while off, every
function here is a check of one module global and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from services.core.errors import ConfigError

_tracer: Any = None
_propagator: Any = None


def enabled() -> bool:
    return _tracer is not None


def enable(service: str, exporter: Any = None) -> None:
    """Start tracing in this process; spans go to `exporter` (tests) or OTLP over HTTP."""
    global _tracer, _propagator
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import (
            TraceContextTextMapPropagator,
        )
    except ImportError:
        raise ConfigError(
            "ZLOTH_TRACING: install the tracing extra (pip install 'zloth[tracing]')"
        ) from None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "ZLOTH_TRACING: the OTLP exporter is missing (pip install 'zloth[tracing]')"
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    _tracer = provider.get_tracer("zloth")
    _propagator = TraceContextTextMapPropagator()


def disable() -> None:
    global _tracer, _propagator
    _tracer = _propagator = None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add `traceparent` for the current span to outgoing message headers."""
    if _propagator is not None:
        _propagator.inject(headers)


@contextmanager
def span(
    name: str, headers: Mapping[str, str] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A span, child of the trace in `headers` when given, else of the current span."""
    if _tracer is None:
        yield
        return
    context = _propagator.extract(dict(headers)) if headers is not None else None
    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    with _tracer.start_as_current_span(name, context=context, attributes=clean):
        yield
