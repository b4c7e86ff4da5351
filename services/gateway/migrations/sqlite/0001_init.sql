-- The gateway's own tables: the conversation (repos, tasks, messages), the runs read model
-- (which is also the outbox of accepted runs), and idempotency keys.
-- `seq` columns give a stable newest-first order that no clock skew can reorder.

CREATE TABLE IF NOT EXISTS repos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL UNIQUE,
    default_branch TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    repo_id TEXT NOT NULL REFERENCES repos (id),
    title TEXT,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    task_id TEXT NOT NULL REFERENCES tasks (id),
    instruction TEXT NOT NULL,
    executors TEXT NOT NULL,  -- JSON array of executor names
    base_ref TEXT,
    timeout_seconds REAL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_task ON messages (task_id, seq);

-- No foreign keys here: a run may first be learned from an event (the read model
-- inserts what it is told), and events never wait for the conversation tables.
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    task_id TEXT NOT NULL,
    message_id TEXT,
    executor TEXT NOT NULL,
    previous_run_id TEXT,
    -- outbox: the StartRun to (re)publish; NULL for a run only known from events
    command BLOB,
    correlation_id TEXT,
    accepted_at TEXT,
    dispatch_after REAL,  -- epoch seconds: the reconciler may publish from then on
    dispatched_at REAL,   -- epoch seconds of the last successful publish
    dispatch_count INTEGER NOT NULL DEFAULT 0,
    -- read model: the newest RunStateChanged snapshot (by version)
    state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    queued_at TEXT,
    started_at TEXT,
    agent_started_at TEXT,
    finished_at TEXT,
    summary TEXT,
    session_id TEXT,
    branch TEXT,
    base_sha TEXT,
    commit_sha TEXT,
    files_changed TEXT NOT NULL DEFAULT '[]',
    diff TEXT,
    diff_truncated INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    usage TEXT NOT NULL DEFAULT '{}',
    cost_usd REAL
);
CREATE INDEX IF NOT EXISTS runs_by_task ON runs (task_id, executor, seq);
CREATE INDEX IF NOT EXISTS runs_by_message ON runs (message_id);
CREATE INDEX IF NOT EXISTS runs_undispatched ON runs (dispatch_after) WHERE dispatched_at IS NULL;
CREATE INDEX IF NOT EXISTS runs_unanswered ON runs (dispatched_at) WHERE version = 0;

-- `owner` is set while the request that claimed the key runs; `status`/`response` once it
-- answered 2xx (written in the same transaction as the request's effects).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    owner TEXT,
    claimed_at REAL NOT NULL,
    created_at REAL NOT NULL,
    status INTEGER,
    response BLOB
);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_at);
