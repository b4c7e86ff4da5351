"""gateway: the HTTP front of zloth (repos, tasks, messages, runs, idempotency keys).

Consumes `zloth.evt.run.>` (RunStateChanged → the read model behind every GET) and reads
the `zloth_executors` KV bucket. Produces `zloth.cmd.sched.start` (StartRun, through the
accepted-runs outbox) and `zloth.cmd.sched.cancel` (CancelRun).
"""

NAME = "gateway"
