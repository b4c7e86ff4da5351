"""executor-runner: runs agents (CLI subprocesses) in their workspaces as hostile code.

Consumes `zloth.cmd.exec.<executor>.<host>.<run_id>` (ExecuteRun of workspaces on this
host; one durable consumer per executor and host whose max_ack_pending is that executor's
concurrency on the host) and listens to
`zloth.evt.exec.cancel`. Produces `zloth.evt.exec.started`, `zloth.evt.exec.finished`,
log chunks on `zloth.logs.<run_id>`, and announces its executors in KV `zloth_executors`.
"""

NAME = "executor-runner"
