-- The archive of finished runs' logs. A run's chunks are stored in segments of
-- consecutive chunks (~256 KiB of JSON lines each, zlib-compressed): big enough to
-- compress well (zlib's window is 32 KiB), small enough that a history page only
-- inflates the segments it needs, and a 10 MiB log is ~40 rows, not thousands.
-- `log_archives` is written last, in the same transaction: a run is archived iff it
-- has a row there, and readers trust the segments only then.
CREATE TABLE IF NOT EXISTS log_archives (
    run_id TEXT PRIMARY KEY,
    state TEXT,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    compressed_bytes INTEGER NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    archived_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS log_archive_segments (
    run_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    raw_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (run_id, first_seq)
);
