-- A cancel that arrived before its run's StartRun (the gateway's outbox may deliver the
-- StartRun late): the run starts out canceled when it comes.
CREATE TABLE IF NOT EXISTS pending_cancels (
    run_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    requested_at REAL NOT NULL
);
