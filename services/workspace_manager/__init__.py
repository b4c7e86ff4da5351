"""workspace-manager: bare mirrors per repository, per-run workspaces made from them (warm
ones from a pool), zloth's commit and push of a run's result, disk budget and GC.

Consumes `zloth.cmd.ws.prepare.<run_id>` and `zloth.cmd.ws.prepare.<host>.<run_id>`
(PrepareWorkspace: any host's, or pinned to this one), `zloth.cmd.ws.commit.<host>.<run_id>`
(CommitWorkspace, of workspaces on this host; see schemas/hosts.py) and `zloth.evt.run.>`
(RunStateChanged: which workspaces are finished).
Produces `zloth.evt.ws.ready`, `zloth.evt.ws.committed`, `zloth.evt.ws.pushed`,
`zloth.evt.ws.failed`.
"""

NAME = "workspace-manager"
