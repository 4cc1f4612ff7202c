"""Configuration read once from the environment into typed settings.

Every app builds its settings with an :class:`Env` reader, which collects every missing or
invalid variable and reports them together in one :class:`ConfigError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from common.numbers import INT_MAX


class ConfigError(Exception):
    """The environment lacks required variables or holds invalid values."""


class Env:
    """Reads variables; secrets may also come from ``<NAME>_FILE`` (Docker secrets convention)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ
        self._missing: list[str] = []
        self._invalid: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name) or None
        path = self._environ.get(f"{name}_FILE") or None
        if value is not None and path is not None:
            self._invalid.append(f"{name} and {name}_FILE are both set")
            return None
        if path is not None:
            try:
                # newline="": the bytes as they are (no \r -> \n translation), like the shell bootstraps.
                with open(path, encoding="utf-8", newline="") as handle:
                    return handle.read().rstrip("\r\n") or None
            except OSError as exc:
                self._invalid.append(f"{name}_FILE={path} cannot be read ({exc.strerror})")
                return None
        return value

    def str(self, name: str, default: str | None = None) -> str:
        value = self._raw(name)
        if value is None:
            if default is None:
                self._missing.append(name)
                return ""
            return default
        return value

    def int(self, name: str, default: int, minimum: int = 0, maximum: int = INT_MAX) -> int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = minimum - 1
        if not minimum <= value <= maximum:
            self._invalid.append(f"{name}={raw!r} is not an integer in [{minimum}, {maximum}]")
            return default
        return value

    def float(self, name: str, default: float, minimum: float = 0.0) -> float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = minimum - 1
        if not value >= minimum:
            self._invalid.append(f"{name}={raw!r} is not a number >= {minimum}")
            return default
        return value

    def check(self) -> None:
        """Raise one error naming every missing or invalid variable seen so far."""
        problems = []
        if self._missing:
            problems.append("missing required environment variables: " + ", ".join(self._missing))
        problems.extend(self._invalid)
        if problems:
            raise ConfigError("; ".join(problems))
