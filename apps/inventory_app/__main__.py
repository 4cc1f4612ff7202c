"""Entry point: ``python -m inventory_app``."""

from __future__ import annotations

from common import app_main
from common.config import Env
from common.db import DbSettings, Pool
from inventory_app.movies import MovieStore
from inventory_app.routes import build_app


def main() -> None:
    env = Env()
    db = DbSettings.from_env(env)
    http = app_main.HttpSettings.from_env(env)
    env.check()
    pool = Pool(db, size=http.threads, application_name="inventory-app")
    app = build_app(MovieStore(pool), pool, http.max_body_bytes)
    app_main.serve_http(app, http, behind_gateway=True)
    pool.close()


if __name__ == "__main__":
    app_main.run(main)
