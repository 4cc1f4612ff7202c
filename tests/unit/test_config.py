"""Configuration read from the environment (common.config.Env): every missing or invalid variable is
reported in one error at start-up, secrets may come from <NAME>_FILE (how a file's content is read:
test_file_env.py), and numbers are held to their bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import ConfigError, Env
from common.numbers import INT_MAX


def problems(env: Env) -> str:
    with pytest.raises(ConfigError) as raised:
        env.check()
    return str(raised.value)


def test_every_missing_and_invalid_variable_is_reported_together_in_one_error() -> None:
    env = Env({"DB_PORT": "http", "DB_CONNECT_TIMEOUT": "-1", "DB_USER": ""})
    assert (env.str("DB_HOST"), env.str("DB_USER"), env.str("DB_PASSWORD")) == ("", "", "")
    assert env.int("DB_PORT", 5432, 1, 65535) == 5432
    assert env.float("DB_CONNECT_TIMEOUT", 2.0, 0.1) == 2.0
    assert problems(env) == (
        "missing required environment variables: DB_HOST, DB_USER, DB_PASSWORD; "
        "DB_PORT='http' is not an integer in [1, 65535]; "
        "DB_CONNECT_TIMEOUT='-1' is not a number >= 0.1"
    )


def test_a_complete_environment_passes_and_absent_optional_variables_take_their_default() -> None:
    env = Env({"DB_HOST": "billing-db", "DB_PORT": "6543", "DB_CONNECT_TIMEOUT": "0.5"})
    assert env.str("DB_HOST") == "billing-db"
    assert env.str("RABBITMQ_QUEUE", "billing_queue") == "billing_queue"
    assert env.int("DB_PORT", 5432, 1, 65535) == 6543
    assert env.int("DB_STATEMENT_TIMEOUT_MS", 5000, 1) == 5000
    assert env.float("DB_CONNECT_TIMEOUT", 2.0, 0.1) == 0.5
    env.check()


@pytest.mark.parametrize(
    ("raw", "valid"),
    [("1", True), ("65535", True), ("0", False), ("65536", False), ("-5", False), ("1.5", False), ("1e3", False)],
)
def test_an_integer_is_held_to_its_bounds(raw: str, valid: bool) -> None:
    env = Env({"PORT": raw})
    value = env.int("PORT", 3000, 1, 65535)
    if valid:
        assert value == int(raw)
        env.check()
    else:
        assert value == 3000
        assert problems(env) == f"PORT={raw!r} is not an integer in [1, 65535]"


def test_an_integer_above_int_max_is_refused_by_default() -> None:
    env = Env({"LIMIT": str(INT_MAX + 1)})
    assert env.int("LIMIT", 10) == 10
    assert problems(env) == f"LIMIT='{INT_MAX + 1}' is not an integer in [0, {INT_MAX}]"


@pytest.mark.parametrize(("raw", "valid"), [("0.1", True), ("3", True), ("0.09", False), ("nan", False), ("x", False)])
def test_a_number_is_held_to_its_minimum_and_nan_is_refused(raw: str, valid: bool) -> None:
    env = Env({"TIMEOUT": raw})
    value = env.float("TIMEOUT", 2.0, 0.1)
    if valid:
        assert value == float(raw)
        env.check()
    else:
        assert value == 2.0
        assert problems(env) == f"TIMEOUT={raw!r} is not a number >= 0.1"


def test_a_secret_comes_from_its_file_when_name_file_is_set(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("s3cret\n")
    env = Env({"DB_PASSWORD_FILE": str(secret), "DB_PORT_FILE": str(tmp_path / "port")})
    (tmp_path / "port").write_text("6543\n")
    assert env.str("DB_PASSWORD") == "s3cret"
    assert env.int("DB_PORT", 5432, 1, 65535) == 6543
    env.check()


def test_a_variable_set_both_directly_and_as_a_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("from-file")
    env = Env({"DB_PASSWORD": "direct", "DB_PASSWORD_FILE": str(secret)})
    assert env.str("DB_PASSWORD") == ""
    # Neither value is used: the variable is then also missing.
    assert problems(env) == (
        "missing required environment variables: DB_PASSWORD; DB_PASSWORD and DB_PASSWORD_FILE are both set"
    )


def test_an_unreadable_secret_file_is_reported_with_its_path_and_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    env = Env({"DB_PASSWORD_FILE": str(missing), "RABBITMQ_PASSWORD_FILE": str(tmp_path)})
    env.str("DB_PASSWORD")
    env.str("RABBITMQ_PASSWORD")
    assert problems(env) == (
        "missing required environment variables: DB_PASSWORD, RABBITMQ_PASSWORD; "
        f"DB_PASSWORD_FILE={missing} cannot be read (No such file or directory); "
        f"RABBITMQ_PASSWORD_FILE={tmp_path} cannot be read (Is a directory)"
    )


def test_an_empty_value_or_an_empty_secret_file_counts_as_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    env = Env({"DB_USER": "", "DB_PASSWORD_FILE": str(empty), "DB_NAME_FILE": ""})
    env.str("DB_USER")
    env.str("DB_PASSWORD")
    env.str("DB_NAME")
    assert env.str("DB_HOST", "localhost") == "localhost"
    assert problems(env) == "missing required environment variables: DB_USER, DB_PASSWORD, DB_NAME"


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PWC_TEST_CONFIG_VALUE", "from the process")
    assert Env().str("PWC_TEST_CONFIG_VALUE") == "from the process"
