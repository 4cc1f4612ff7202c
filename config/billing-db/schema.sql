-- Billing schema. Applied by scripts/db-bootstrap.sh once, when an empty volume is first
-- initialised, inside the application database as its owner role. Idempotent (IF NOT EXISTS).
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
