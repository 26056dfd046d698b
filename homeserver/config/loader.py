"""Reading homeserver.yaml from disk: :func:`load_config` and :func:`parse_config`."""

from __future__ import annotations

import os
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # stubs: types-PyYAML

from homeserver.config.homeserver import HomeserverConfig
from homeserver.config.reader import ConfigError


class _Loader(yaml.SafeLoader):  # type: ignore[misc, unused-ignore]
    """A safe loader that notes keys given twice in one mapping (YAML keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in first_seen:
                    self.duplicate_keys.append(
                        f'line {line}: key "{key}" is given twice (first on line {first_seen[key]}); the last one wins'
                    )
                else:
                    first_seen[key] = line
            except TypeError:  # an unhashable key: let the base class report it
                pass
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _yaml_error_message(path: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
    detail = f"{problem} ({context})" if context else problem
    return f"{path}: invalid YAML at {where}: {detail}"


def read_yaml(path: str) -> tuple[Any, list[str]]:
    """Load one YAML file; return the data and warnings about duplicate keys.

    Raises :class:`ConfigError` when the file cannot be read or is not valid YAML.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e}") from None
    loader = _Loader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error_message(path, e)) from None
    finally:
        loader.dispose()
    return data, [f"{path}: {message}" for message in loader.duplicate_keys]


def parse_config(data: Any, *, config_dir: str) -> tuple[HomeserverConfig, list[str]]:
    """Parse already-loaded configuration data; relative paths resolve against ``config_dir``.

    Returns ``(config, warnings)``; raises :class:`ConfigError` listing every error.
    """
    return HomeserverConfig.from_dict(data, config_dir=config_dir)


def load_config(path: str) -> tuple[HomeserverConfig, list[str]]:
    """Load and parse homeserver.yaml at ``path``.

    Relative paths inside the file are resolved against the file's directory.  Returns
    ``(config, warnings)`` (the caller logs the warnings); raises :class:`ConfigError`
    for a missing or unreadable file, invalid YAML (with the line number) or any
    invalid setting.
    """
    path = os.path.abspath(path)
    data, warnings = read_yaml(path)
    config, more = parse_config(data, config_dir=os.path.dirname(path))
    return config, warnings + more
