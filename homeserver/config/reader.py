"""A typed reader over one mapping of the configuration that remembers its key path.

Every section parser reads its keys through a :class:`Reader`.  A bad value never stops
parsing: the reader records ``key.path: expected ..., got ...`` in the shared
:class:`Problems` and hands back the default, so one run reports every error at once.
The reader also remembers which keys were read; :meth:`Reader.finish` turns the rest into
warnings ("unknown key" or, for keys Synapse has and we do not, "not supported yet").
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from homeserver.config.units import (
    DURATION_EXPECTED,
    SIZE_EXPECTED,
    parse_duration,
    parse_size,
)


class ConfigError(Exception):
    """The configuration is unusable; ``errors`` lists every problem, one per entry."""

    def __init__(self, errors: str | Iterable[str]) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class Problems:
    """Errors and warnings collected while parsing one configuration."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def raise_if_errors(self) -> None:
        """Raise one :class:`ConfigError` listing every error collected so far."""
        if self.errors:
            raise ConfigError(self.errors)


def show(value: Any) -> str:
    """Describe a configuration value the way it would look in YAML, briefly."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" {minimum}-{maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


_MISSING: Any = object()


class Reader:
    """Typed access to the keys of one mapping found at ``path`` in the configuration.

    Getters take the key and a default; an absent key gives the default, and so does a
    ``null`` value unless the getter is one of the ``optional_*`` ones (where ``null``
    means "unset").
    """

    def __init__(self, data: Mapping[str, Any], path: str, problems: Problems, *, config_dir: str) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.config_dir = config_dir
        self._seen: set[str] = set()

    # -- paths and problems ------------------------------------------------------------

    def key_path(self, key: str | int) -> str:
        """The full path of ``key`` below this mapping, e.g. ``listeners[0].port``."""
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def _where(self, key: str) -> str:
        return self.key_path(key) if key else (self.path or "(top level)")

    def error(self, key: str, message: str) -> None:
        """Record an error about ``key`` (a key of this mapping; "" for the mapping itself)."""
        self.problems.errors.append(f"{self._where(key)}: {message}")

    def warn(self, key: str, message: str) -> None:
        """Record a warning about ``key``."""
        self.problems.warnings.append(f"{self._where(key)}: {message}")

    def expected(self, key: str, what: str, value: Any) -> None:
        """Record ``key: expected <what>, got <value>``."""
        self.error(key, f"expected {what}, got {show(value)}")

    # -- raw access --------------------------------------------------------------------

    def has(self, key: str) -> bool:
        """True when ``key`` is present with a non-null value."""
        return self.data.get(key) is not None

    def raw(self, key: str, default: Any = None) -> Any:
        """The value as written (marking the key as read), or ``default`` when absent."""
        self._seen.add(key)
        return self.data.get(key, default)

    def ignore(self, *keys: str) -> None:
        """Mark keys as read without using them (they are handled elsewhere)."""
        self._seen.update(keys)

    def _get(self, key: str) -> Any:
        self._seen.add(key)
        value = self.data.get(key, _MISSING)
        return _MISSING if value is None else value

    # -- scalars -----------------------------------------------------------------------

    def string(self, key: str, default: str, *, expected: str = "a string") -> str:
        """A string value; numbers are not silently converted."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.expected(key, expected, value)
            return default
        return value

    def optional_string(self, key: str, default: str | None = None, *, expected: str = "a string") -> str | None:
        """A string, or ``None`` when absent or null."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.expected(key, expected, value)
            return default
        return value

    def required_string(self, key: str, *, expected: str = "a string") -> str:
        """A string that must be present; records an error and returns "" otherwise."""
        value = self._get(key)
        if value is _MISSING:
            self.error(key, f"required key is missing; expected {expected}")
            return ""
        if not isinstance(value, str):
            self.expected(key, expected, value)
            return ""
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false`` (YAML 1.1 also reads yes/no/on/off as booleans)."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.expected(key, "true or false", value)
            return default
        return value

    def integer(self, key: str, default: int, *, min: int | None = None, max: int | None = None) -> int:
        """An integer, optionally within ``min``..``max`` inclusive."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if type(value) is not int or (min is not None and value < min) or (max is not None and value > max):
            self.expected(key, "an integer" + _range_text(min, max), value)
            return default
        return int(value)

    def number(self, key: str, default: float, *, min: float | None = None) -> float:
        """An integer or decimal number, returned as a float."""
        value = self._get(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (min is not None and value < min):
            self.expected(key, "a number" + _range_text(min, None), value)
            return default
        return float(value)

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        """One of a fixed set of strings."""
        options = list(choices)
        value = self._get(key)
        if value is _MISSING:
            return default
        if value not in options:
            self.expected(key, "one of " + ", ".join(json.dumps(o) for o in options), value)
            return default
        return str(value)

    def duration(self, key: str, default: int | str) -> int:
        """A duration in milliseconds (see :mod:`homeserver.config.units`)."""
        value = self._get(key)
        if value is _MISSING:
            return parse_duration(default)
        try:
            return parse_duration(value)
        except ValueError:
            self.expected(key, DURATION_EXPECTED, value)
            return parse_duration(default)

    def optional_duration(self, key: str, default: int | str | None = None) -> int | None:
        """A duration in milliseconds; an explicit ``null`` means "unset" (``None``)."""
        self._seen.add(key)
        value = self.data.get(key, default)
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError:
            self.expected(key, DURATION_EXPECTED, value)
            return None if default is None else parse_duration(default)

    def size(self, key: str, default: int | str) -> int:
        """A size in bytes (see :mod:`homeserver.config.units`)."""
        value = self._get(key)
        if value is _MISSING:
            return parse_size(default)
        try:
            return parse_size(value)
        except ValueError:
            self.expected(key, SIZE_EXPECTED, value)
            return parse_size(default)

    def resolve(self, path: str) -> str:
        """Make ``path`` absolute, relative to the configuration file's directory."""
        return os.path.normpath(os.path.join(self.config_dir, os.path.expanduser(path)))

    def path_value(self, key: str, default: str) -> str:
        """A file system path, resolved against the configuration directory."""
        value = self.string(key, default, expected="a file path")
        return self.resolve(value or default)

    def optional_path(self, key: str) -> str | None:
        """A file system path, or ``None`` when absent or null."""
        value = self.optional_string(key, expected="a file path")
        return self.resolve(value) if value else None

    # -- collections -------------------------------------------------------------------

    def strings(
        self,
        key: str,
        default: Iterable[str] = (),
        *,
        item: Callable[[str], bool] | None = None,
        item_expected: str = "a string",
        expected: str = "a list of strings",
    ) -> tuple[str, ...]:
        """A list of strings; ``item`` validates each one (errors name the index)."""
        result = self.optional_strings(key, item=item, item_expected=item_expected, expected=expected)
        return tuple(default) if result is None else result

    def optional_strings(
        self,
        key: str,
        *,
        item: Callable[[str], bool] | None = None,
        item_expected: str = "a string",
        expected: str = "a list of strings",
    ) -> tuple[str, ...] | None:
        """A list of strings, or ``None`` when the key is absent or null."""
        value = self._get(key)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            self.expected(key, expected, value)
            return None
        result: list[str] = []
        for index, entry in enumerate(value):
            if not isinstance(entry, str) or (item is not None and not item(entry)):
                self.problems.errors.append(
                    f"{self.key_path(key)}[{index}]: expected {item_expected}, got {show(entry)}"
                )
            else:
                result.append(entry)
        return tuple(result)

    def json_object(self, key: str) -> dict[str, Any]:
        """A mapping kept as plain JSON-like data (deep-copied); {} when absent."""
        value = self._get(key)
        if value is _MISSING:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            self.expected(key, "a mapping", value)
            return {}
        return copy.deepcopy(value)

    def section(self, key: str) -> Reader:
        """A reader for the mapping under ``key``; an empty one when absent or invalid."""
        value = self._get(key)
        if value is _MISSING:
            value = {}
        elif not isinstance(value, dict):
            self.expected(key, "a mapping", value)
            value = {}
        return Reader(value, self.key_path(key), self.problems, config_dir=self.config_dir)

    def optional_section(self, key: str) -> Reader | None:
        """A reader for the mapping under ``key``, or ``None`` when absent or null."""
        if self.data.get(key) is None:
            self._seen.add(key)
            return None
        return self.section(key)

    def sections(self, key: str) -> list[Reader]:
        """Readers for a list of mappings, each at ``key[index]``."""
        value = self._get(key)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            self.expected(key, "a list", value)
            return []
        readers: list[Reader] = []
        for index, entry in enumerate(value):
            path = f"{self.key_path(key)}[{index}]"
            if not isinstance(entry, dict):
                self.problems.errors.append(f"{path}: expected a mapping, got {show(entry)}")
                continue
            readers.append(Reader(entry, path, self.problems, config_dir=self.config_dir))
        return readers

    # -- the end -----------------------------------------------------------------------

    def finish(self, *, unsupported: Iterable[str] = ()) -> None:
        """Warn about every key that was not read.

        ``unsupported`` names keys that Synapse understands here and we do not (yet):
        they get "not supported yet, ignored" instead of "unknown key, ignored".
        """
        not_yet = set(unsupported)
        for key in self.data:
            if key in self._seen:
                continue
            if not isinstance(key, str):
                self.warn("", f"ignoring non-string key {show(key)}")
            elif key in not_yet:
                self.warn(key, "not supported yet, ignored")
            else:
                hint = difflib.get_close_matches(key, [str(k) for k in self._seen | not_yet], n=1)
                suffix = f' (did you mean "{hint[0]}"?)' if hint else ""
                self.warn(key, f"unknown key, ignored{suffix}")
