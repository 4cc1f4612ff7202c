-- Inventory schema, first migration: the schema as it was before migrations existed. Idempotent (IF NOT
-- EXISTS), so that volumes created before then take it as already applied and keep every row.
-- Constraints mirror the API validation of inventory-app.

-- Trigram index support for case-insensitive substring search (title ILIKE '%x%').
-- Trusted extension: the database owner may create it without superuser rights.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE IF NOT EXISTS movies (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title       varchar(255) NOT NULL CHECK (char_length(title) BETWEEN 1 AND 255),
    description text NOT NULL DEFAULT '' CHECK (char_length(description) <= 10000)
);

-- fastupdate off: new titles go straight into the index instead of a pending list that every
-- search must scan until (auto)vacuum merges it; with it on, 20k freshly inserted titles made the
-- planner prefer a sequential scan (8x slower). A catalogue is read far more than written.
CREATE INDEX IF NOT EXISTS movies_title_trgm_idx ON movies USING gin (title gin_trgm_ops) WITH (fastupdate = off);
