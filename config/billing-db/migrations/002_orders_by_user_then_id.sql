-- GET /api/orders?user_id=N pages one user's orders by id (WHERE user_id = N ORDER BY id LIMIT ...).
-- An index on (user_id, id) gives them in that order, so a page reads only its own rows; with the index
-- on user_id alone, PostgreSQL fetched and sorted every order of the user before taking a page.
CREATE INDEX orders_user_id_id_idx ON orders (user_id, id);
DROP INDEX orders_user_id_idx;
