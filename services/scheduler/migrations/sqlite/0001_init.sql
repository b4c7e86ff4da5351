-- The authoritative run records. `doc` is the RunRecord as JSON; the columns beside it
-- are what the scheduler searches by.
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    retry_at REAL,
    doc BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, updated_at);
CREATE INDEX IF NOT EXISTS runs_retry ON runs (retry_at) WHERE retry_at IS NOT NULL;
