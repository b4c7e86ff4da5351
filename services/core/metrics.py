"""Every Prometheus metric zloth exposes, in one registry, named by the conventions.

Services import the objects they update; `/metrics` renders `REGISTRY`. Buckets fit the
thing measured: milliseconds for dispatch, minutes for agent runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_DISPATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_GIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BYTES_BUCKETS = tuple(float(1 << n) for n in range(10, 36, 2))

queue_size = Gauge(
    "zloth_queue_size", "Messages waiting in a consumer (pending)", ["kind"], registry=REGISTRY
)
queue_ack_pending = Gauge(
    "zloth_queue_ack_pending", "Messages delivered but not yet acked", ["kind"], registry=REGISTRY
)
queue_latency = Histogram(
    "zloth_queue_latency_seconds",
    "Time from publish (accepted) to dispatch to a handler",
    ["kind"],
    buckets=_DISPATCH_BUCKETS,
    registry=REGISTRY,
)
job_duration = Histogram(
    "zloth_job_duration_seconds",
    "Handler duration by message kind and outcome",
    ["kind", "status"],
    buckets=_JOB_BUCKETS,
    registry=REGISTRY,
)
jobs_total = Counter(
    "zloth_jobs_total", "Handled messages by kind and outcome", ["kind", "status"],
    registry=REGISTRY,
)
redeliveries_total = Counter(
    "zloth_redeliveries_total", "Deliveries with num_delivered > 1", ["kind"], registry=REGISTRY
)
dead_letters_total = Counter(
    "zloth_dead_letters_total", "Messages dead-lettered", ["kind"], registry=REGISTRY
)
stale_deliveries_total = Counter(
    "zloth_stale_deliveries_total",
    "Deliveries refused by the fencing token (an older attempt still running)",
    ["kind"],
    registry=REGISTRY,
)
runs_by_state = Gauge("zloth_runs", "Runs by state (scheduler view)", ["state"], registry=REGISTRY)
run_transitions_total = Counter(
    "zloth_run_transitions_total", "Run state transitions", ["state"], registry=REGISTRY
)
runs_overdue_total = Counter(
    "zloth_runs_overdue_total",
    "Runs failed by the scheduler for want of a result long after the runner's time limit",
    ["executor"], registry=REGISTRY,
)
agent_runs_active = Gauge(
    "zloth_agent_processes", "Agent processes running on this runner", ["executor"],
    registry=REGISTRY,
)
agent_start_latency = Histogram(
    "zloth_job_start_latency_seconds",
    "Time from gateway accept to agent process start",
    ["executor"],
    buckets=_DISPATCH_BUCKETS,
    registry=REGISTRY,
)
git_clone_seconds = Histogram(
    "zloth_git_clone_seconds",
    "Time to make a run's workspace (or mirror) ready",
    ["kind"],
    buckets=_GIT_BUCKETS,
    registry=REGISTRY,
)
git_clone_bytes = Histogram(
    "zloth_git_clone_bytes",
    "Disk written for a run's workspace (or mirror)",
    ["kind"],
    buckets=_BYTES_BUCKETS,
    registry=REGISTRY,
)
log_lines_total = Counter(
    "zloth_log_lines_total", "Agent output lines published", ["stream"], registry=REGISTRY
)
log_lines_dropped_total = Counter(
    "zloth_log_lines_dropped_total", "Agent output lines dropped by the per-run cap",
    registry=REGISTRY,
)
sse_clients = Gauge("zloth_sse_clients", "Connected SSE clients", ["route"], registry=REGISTRY)
http_request_duration = Histogram(
    "zloth_http_request_duration_seconds",
    "HTTP request duration by route and status",
    ["service", "route", "method", "status"],
    buckets=_DISPATCH_BUCKETS,
    registry=REGISTRY,
)
llm_requests_total = Counter(
    "zloth_llm_requests_total", "LLM API requests", ["provider", "status"], registry=REGISTRY
)
llm_latency = Histogram(
    "zloth_llm_latency_seconds", "LLM API latency", ["provider"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
llm_tokens_total = Counter(
    "zloth_llm_tokens_total", "LLM tokens", ["provider", "direction"], registry=REGISTRY
)
llm_calls_total = Counter(
    "zloth_llm_calls_total",
    "LLM client calls by outcome (ok, cached, unavailable, failed, rejected, deadline)",
    ["provider", "outcome"],
    registry=REGISTRY,
)
llm_retries_total = Counter(
    "zloth_llm_retries_total", "LLM request retries by reason", ["provider", "reason"],
    registry=REGISTRY,
)
llm_cache_hits_total = Counter(
    "zloth_llm_cache_hits_total", "LLM output cache hits", ["provider"], registry=REGISTRY
)
llm_cache_misses_total = Counter(
    "zloth_llm_cache_misses_total", "LLM output cache misses", ["provider"], registry=REGISTRY
)
llm_breaker_state = Gauge(
    "zloth_llm_breaker_state", "Circuit breaker state seen here: 0 closed, 1 half-open, 2 open",
    ["provider"], registry=REGISTRY,
)
llm_ratelimit_wait = Histogram(
    "zloth_llm_ratelimit_wait_seconds", "Time a request waited for the client's rate limiter",
    ["provider"], buckets=(*_DISPATCH_BUCKETS, 60.0, 120.0), registry=REGISTRY,
)
workspaces = Gauge(
    "zloth_workspaces", "Workspaces on this host by state (active, warm, finished)", ["state"],
    registry=REGISTRY,
)
workspace_bytes = Gauge(
    "zloth_workspace_bytes", "Disk used by the workspaces on this host", registry=REGISTRY
)
workspace_budget_bytes = Gauge(
    "zloth_workspace_budget_bytes", "Disk budget of the workspaces on this host",
    registry=REGISTRY,
)
mirror_bytes = Gauge("zloth_mirror_bytes", "Disk used by the bare mirrors", registry=REGISTRY)
workspace_pool_takes_total = Counter(
    "zloth_workspace_pool_takes_total",
    "Workspaces asked for with a warm pool configured: taken from it (hit) or made (miss)",
    ["outcome"],
    registry=REGISTRY,
)
workspace_removed_total = Counter(
    "zloth_workspace_removed_total",
    "Workspaces removed or recycled, by reason (retention, budget, orphan, recycled, pool)",
    ["reason"],
    registry=REGISTRY,
)
git_push_total = Counter(
    "zloth_git_push_total",
    "Pushes of a run's branch by outcome (pushed, merged_then_pushed, rejected, failed)",
    ["outcome"],
    registry=REGISTRY,
)
