-- Outcomes of finished executions: a redelivered or re-published command of a finished
-- attempt re-announces its outcome instead of running the agent again.
CREATE TABLE IF NOT EXISTS executions (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    finished BLOB NOT NULL,
    PRIMARY KEY (run_id, attempt)
);
