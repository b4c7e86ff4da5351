"""scheduler: owns the authoritative run state machine, retries, the reconciler.

Consumes `zloth.cmd.sched.>` (StartRun, CancelRun), `zloth.evt.ws.>` and `zloth.evt.exec.>`
(worker events), `zloth.dlq.>` (dead-lettered commands). Produces `zloth.evt.run.>`
(RunStateChanged snapshots), `zloth.cmd.ws.*`, `zloth.cmd.exec.<executor>.<host>.*` (each
run's later commands go to its workspace's host: schemas/hosts.py),
`zloth.evt.exec.cancel`, and the end marker of each run's log on `zloth.logs.<run_id>`.
"""

NAME = "scheduler"
