"""Settings are read once from VIGIL_* variables; bad values get a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import SettingsError, load_settings


def test_defaults_embed_sqlite_and_generate_a_secret(tmp_path: Path) -> None:
    s = load_settings({"VIGIL_VAR_DIR": str(tmp_path)})
    assert s.host == "127.0.0.1" and s.port == 8080
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'vigil.sqlite3'}"
    assert s.redis_url is None and s.time_scale == 1.0 and s.ice_servers == ()
    assert s.public_url == "http://127.0.0.1:8080"
    key_file = tmp_path / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(s.secret_key) >= 32
    # Kept: the next start signs with the same key, so issued links keep working.
    assert load_settings({"VIGIL_VAR_DIR": str(tmp_path)}).secret_key == s.secret_key
    assert "secret_key" not in repr(s) or s.secret_key not in repr(s)


def test_values_are_parsed(tmp_path: Path) -> None:
    s = load_settings(
        {
            "VIGIL_VAR_DIR": str(tmp_path),
            "VIGIL_HOST": "0.0.0.0",
            "VIGIL_PORT": "9000",
            "VIGIL_DATABASE_URL": "postgresql://vigil@db.internal/vigil",
            "VIGIL_REDIS_URL": "redis://127.0.0.1:6379/1",
            "VIGIL_TIME_SCALE": "60",
            "VIGIL_ICE_SERVERS": '[{"urls": "turn:turn.example.org:3478", "username": "u", "credential": "c"}, {"urls": ["stun:stun.example.org"]}]',
            "VIGIL_SECRET_KEY": "k" * 40,
            "VIGIL_PUBLIC_URL": "https://vigil.example.org/",
        }
    )
    assert s.database_url == "postgresql+asyncpg://vigil@db.internal/vigil"
    assert s.time_scale == 60 and s.port == 9000 and s.host == "0.0.0.0"
    assert s.ice_servers[0].as_dict() == {
        "urls": ["turn:turn.example.org:3478"],
        "username": "u",
        "credential": "c",
    }
    assert s.ice_servers[1].urls == ("stun:stun.example.org",)
    assert s.public_url == "https://vigil.example.org"
    assert load_settings(
        {"VIGIL_VAR_DIR": str(tmp_path), "VIGIL_ICE_SERVERS": "stun:a.example, stun:b.example"}
    ).ice_servers[1].urls == ("stun:b.example",)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("VIGIL_PORT", "eighty", "VIGIL_PORT"),
        ("VIGIL_PORT", "70000", "between 0 and 65535"),
        ("VIGIL_TIME_SCALE", "0", "positive"),
        ("VIGIL_TIME_SCALE", "fast", "number"),
        ("VIGIL_DATABASE_URL", "mysql://x/y", "VIGIL_DATABASE_URL"),
        ("VIGIL_REDIS_URL", "http://localhost", "redis"),
        ("VIGIL_ICE_SERVERS", "http://stun.example", "stun:"),
        ("VIGIL_ICE_SERVERS", "[{]", "JSON"),
        ("VIGIL_SECRET_KEY", "short", "32"),
        ("VIGIL_PUBLIC_URL", "vigil.example.org", "VIGIL_PUBLIC_URL"),
        ("VIGIL_LOG_LEVEL", "LOUD", "VIGIL_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings({"VIGIL_VAR_DIR": str(tmp_path), name: value})
    assert fragment in str(e.value)


def test_cli_reports_a_bad_setting_with_exit_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.__main__ import main

    monkeypatch.setenv("VIGIL_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("VIGIL_TIME_SCALE", "-1")
    assert main(["migrate"]) == 2
    assert "VIGIL_TIME_SCALE" in capsys.readouterr().err
