"""log-relay: live agent logs over Server-Sent Events (resumable) and the log archive.

Consumes `zloth.logs.<run_id>` (stream ZLOTH_LOGS: each run's LogChunks, ended by the
scheduler's `final` chunk) and `zloth.evt.run.<state>.<task_id>.<run_id>` (ZLOTH_EVT: run
state changes, for the per-task event stream). Durable consumer `log-relay-archive` on
`zloth.logs.>` archives a run's whole log into this service's store when its final chunk
arrives. Produces nothing on the bus: SSE streams and JSON pages over HTTP.
"""

NAME = "log-relay"
