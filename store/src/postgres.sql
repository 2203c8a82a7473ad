-- Message store schema, PostgreSQL dialect. Idempotent: run on every connect, under an
-- advisory lock so that concurrent first starts do not race on the catalog.
-- `data` is TEXT (not jsonb) so that the payload round-trips byte for byte.
CREATE TABLE IF NOT EXISTS rooms (
    room     TEXT   NOT NULL PRIMARY KEY,
    last_seq BIGINT NOT NULL CHECK (last_seq >= 0)
);

CREATE TABLE IF NOT EXISTS messages (
    room   TEXT   NOT NULL,
    seq    BIGINT NOT NULL CHECK (seq > 0),
    id     TEXT   NOT NULL,
    sender TEXT   NOT NULL,
    event  TEXT   NOT NULL,
    ts     BIGINT NOT NULL,
    data   TEXT   NOT NULL,
    PRIMARY KEY (room, seq),
    UNIQUE (sender, id)
);
