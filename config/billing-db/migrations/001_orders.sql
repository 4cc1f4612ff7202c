-- Billing schema, first migration: the schema as it was before migrations existed. Idempotent (IF NOT
-- EXISTS), so that volumes created before then take it as already applied and keep every row.
-- Constraints mirror the validation of billing-app; message_id makes storing idempotent
-- (a redelivered message never creates a second order).

CREATE TABLE IF NOT EXISTS orders (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         integer NOT NULL CHECK (user_id > 0),
    number_of_items integer NOT NULL CHECK (number_of_items > 0),
    total_amount    numeric(12, 2) NOT NULL CHECK (total_amount >= 0),
    message_id      uuid NOT NULL UNIQUE,
    request_id      varchar(128),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS orders_user_id_idx ON orders (user_id);
