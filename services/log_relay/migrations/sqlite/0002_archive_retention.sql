-- Archive retention (services/log_relay/retention.py): archives are removed oldest
-- archived first, by age and then by the total size budget. Each removed run leaves a
-- small tombstone, so its history can answer "expired" (410) rather than look like a run
-- that has not started yet; tombstones are forgotten after their own, longer, age.
CREATE INDEX IF NOT EXISTS log_archives_by_age ON log_archives (archived_at, run_id);

CREATE TABLE IF NOT EXISTS log_archive_expired (
    run_id TEXT PRIMARY KEY,
    state TEXT,
    last_seq INTEGER NOT NULL,
    compressed_bytes INTEGER NOT NULL,
    archived_at TEXT NOT NULL,
    expired_at TEXT NOT NULL,
    reason TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS log_archive_expired_by_age ON log_archive_expired (expired_at);
