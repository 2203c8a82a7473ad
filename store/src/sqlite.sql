-- Message store schema, SQLite dialect. Idempotent: run on every connect.
CREATE TABLE IF NOT EXISTS rooms (
    room     TEXT    NOT NULL PRIMARY KEY,
    last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE IF NOT EXISTS messages (
    room   TEXT    NOT NULL,
    seq    INTEGER NOT NULL CHECK (seq > 0),
    id     TEXT    NOT NULL,
    sender TEXT    NOT NULL,
    event  TEXT    NOT NULL,
    ts     INTEGER NOT NULL,
    data   TEXT    NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (sender, id)
);
