"""Durations and sizes, as Synapse writes them."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.config import ConfigError, parse_config, parse_duration, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1500, 1500),
        ("1500", 1500),
        ("30s", 30_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("2w", 14 * 86_400_000),
        ("1y", 365 * 86_400_000),
        (" 1d ", 86_400_000),
    ],
)
def test_parse_duration(value: Any, expected: int) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("value", ["", "1x", "1.5h", "-5m", "d", "1 d", -1, 1.5, True, None, [1]])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (512, 512),
        ("512", 512),
        ("10K", 10 * 1024),
        ("10k", 10 * 1024),
        ("50M", 50 * 1024**2),
        ("1G", 1024**3),
        ("2T", 2 * 1024**4),
    ],
)
def test_parse_size(value: Any, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "10MB", "1.5M", "M", "-1", -1, 2.5, False, None])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="expected a size"):
        parse_size(value)


def test_durations_and_sizes_in_config(tmp_path: Any) -> None:
    config, _ = parse_config(
        {
            "server_name": "example.com",
            "listeners": [],
            "key_refresh_interval": "2h",
            "session_lifetime": "30d",
            "refreshable_access_token_lifetime": 60000,
            "refresh_token_lifetime": "1w",
            "max_upload_size": "100M",
            "max_request_size": "2M",
        },
        config_dir=str(tmp_path),
    )
    assert config.key_refresh_interval == 2 * 3_600_000
    assert config.session_lifetime == 30 * 86_400_000
    assert config.refreshable_access_token_lifetime == 60_000
    assert config.refresh_token_lifetime == 7 * 86_400_000
    assert config.max_upload_size == 100 * 1024**2
    assert config.max_request_size == 2 * 1024**2


def test_bad_duration_and_size_messages(tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"server_name": "example.com", "key_refresh_interval": "1x", "max_upload_size": "lots"},
            config_dir=str(tmp_path),
        )
    assert info.value.errors == [
        'key_refresh_interval: expected a duration such as "30s", "5m", "12h", "1d", "2w", "1y" '
        'or a number of milliseconds, got "1x"',
        'max_upload_size: expected a size such as "512K", "10M", "1G" or a number of bytes, got "lots"',
    ]


def test_null_refreshable_lifetime_turns_refresh_tokens_off(tmp_path: Any) -> None:
    config, _ = parse_config(
        {"server_name": "example.com", "listeners": [], "refreshable_access_token_lifetime": None},
        config_dir=str(tmp_path),
    )
    assert config.refreshable_access_token_lifetime is None
    default, _ = parse_config({"server_name": "example.com", "listeners": []}, config_dir=str(tmp_path))
    assert default.refreshable_access_token_lifetime == 300_000
