-- Fencing tokens of the job protocol: the newest delivery of a stream message owns it.
CREATE TABLE IF NOT EXISTS zloth_leases (
    consumer TEXT NOT NULL,
    stream_seq INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    holder TEXT NOT NULL,
    renewed_at REAL NOT NULL,
    PRIMARY KEY (consumer, stream_seq)
);
