"""OpenTelemetry traces: spans around poll cycles, provider calls, results
ingests, callback deliveries and API requests.

FastAPI and the anthropic SDK open spans of their own through the same API
(a server span per request, named by its route; one per SDK call); ours
add the job and provider batch ids, and the shape of the leader's work.

Spans carry job and provider batch ids as attributes (never as metric
labels). Nothing is recorded or sent unless `OTEL_EXPORTER_OTLP_ENDPOINT`
is set: the API's default tracer does nothing, at the cost of a function
call. With the endpoint set, spans go to an OTLP/HTTP collector in batches
from a background thread; the exporter is the optional extra `otlp`
(`pip install 'batchwarden[otlp]'`), and the standard `OTEL_*` variables
(headers, service name, sampling) apply.

Trio tasks inherit the context of the task that started them, so a span
open around a nursery is the parent of the spans its tasks open: a poll
cycle's retrieve calls are its children.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from batchwarden import __version__
from batchwarden.errors import ConfigError

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"

tracer = trace.get_tracer("batchwarden", __version__)


def tag_job(job_id: str) -> None:
    """Name the job that the current span (an API request's) is about."""
    trace.get_current_span().set_attribute("batchwarden.job_id", job_id)


def configure(instance_id: str, environ: dict[str, str] | None = None) -> bool:
    """Export spans over OTLP if the environment names an endpoint;
    returns whether it does."""
    environ = os.environ if environ is None else environ
    if not environ.get(ENDPOINT):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError:
        raise ConfigError(
            f"{ENDPOINT} is set but the OTLP exporter is not installed:"
            " pip install 'batchwarden[otlp]'"
        ) from None
    resource = Resource.create(
        {"service.name": "batchwarden", "service.instance.id": instance_id}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True
