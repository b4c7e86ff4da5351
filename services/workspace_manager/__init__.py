"""workspace-manager: bare mirrors per repository, per-run workspaces made from them, and
zloth's commit of a run's result.

Consumes `zloth.cmd.ws.prepare.<run_id>` (PrepareWorkspace) and `zloth.cmd.ws.commit.<run_id>`
(CommitWorkspace). Produces `zloth.evt.ws.ready`, `zloth.evt.ws.committed`,
`zloth.evt.ws.failed`.
"""

NAME = "workspace-manager"
