"""Settings, read once from the environment (``VIGIL_*``) into a frozen object.

Nothing else in Vigil reads ``os.environ``: the CLI calls :func:`load_settings` once and hands
the result to :func:`server.app.create_app`; tests build :class:`Settings` directly.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_VAR_DIR = "var"
SECRET_KEY_FILE = "secret_key"
# A secret shorter than this is refused: HS256 tokens signed with it would be guessable.
MIN_SECRET_KEY_CHARS = 32


class SettingsError(ValueError):
    """A VIGIL_* variable holds a value Vigil cannot use; the message names it and says why."""


@dataclass(frozen=True)
class IceServer:
    """One STUN or TURN server handed to browsers and to the server's own peer connections."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The RTCIceServer dictionary a browser expects."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            out["username"] = self.username
        if self.credential is not None:
            out["credential"] = self.credential
        return out


@dataclass(frozen=True)
class Settings:
    """Everything the process needs to know about its environment, validated."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str = ""
    redis_url: str | None = None
    time_scale: float = 1.0
    ice_servers: tuple[IceServer, ...] = ()
    secret_key: str = field(default="", repr=False)
    public_url: str = ""
    var_dir: Path = Path(DEFAULT_VAR_DIR)
    demo: bool = False
    demo_patients: int = 3
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(
                self, "database_url", f"sqlite+aiosqlite:///{self.var_dir / 'vigil.sqlite3'}"
            )
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://{self.host}:{self.port}")

    def with_(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests and the CLI use it)."""
        return replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        """True when the database is SQLite (the embedded default)."""
        return self.database_url.startswith("sqlite")


def _parse_port(name: str, raw: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected an integer port number") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"{name}={raw!r}: a port is between 0 and 65535")
    return port


def _parse_scale(name: str, raw: str) -> float:
    try:
        scale = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number such as 1 or 60") from None
    if not (scale > 0 and scale < 1e6):
        raise SettingsError(
            f"{name}={raw!r}: the time scale must be positive (60 = an hour a minute)"
        )
    return scale


def _parse_ice(name: str, raw: str) -> tuple[IceServer, ...]:
    """Either a JSON list of RTCIceServer objects or a comma-separated list of URLs."""
    raw = raw.strip()
    if not raw:
        return ()
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{name}: not valid JSON ({exc.msg})") from None
        servers = []
        for item in items:
            if not isinstance(item, dict) or "urls" not in item:
                raise SettingsError(f"{name}: each entry needs 'urls'")
            urls = item["urls"]
            urls = (urls,) if isinstance(urls, str) else tuple(urls)
            servers.append(
                IceServer(
                    urls=urls, username=item.get("username"), credential=item.get("credential")
                )
            )
    else:
        servers = [IceServer(urls=(u.strip(),)) for u in raw.split(",") if u.strip()]
    for server in servers:
        for url in server.urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise SettingsError(f"{name}: {url!r} is not a stun:, turn: or turns: URL")
    return tuple(servers)


def _parse_db(name: str, raw: str) -> str:
    if raw.startswith("postgresql://") or raw.startswith("postgres://"):
        # asyncpg is the driver we ship; accept the URL people paste from their provider.
        raw = "postgresql+asyncpg://" + raw.split("://", 1)[1]
    if not raw.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise SettingsError(
            f"{name}: use sqlite+aiosqlite:///path or postgresql://user@host/db "
            f"(got scheme {raw.split(':', 1)[0]!r})"
        )
    return raw


def _parse_url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(raw)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise SettingsError(
            f"{name}={raw!r}: expected a URL starting with {' or '.join(schemes)}://"
        )
    return raw.rstrip("/")


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}={raw!r}: expected 1/0, true/false, yes/no")


def ensure_secret_key(var_dir: Path) -> str:
    """Read the generated secret under *var_dir*, creating it (mode 0600) on first run."""
    path = var_dir / SECRET_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``VIGIL_*`` variables; raise :class:`SettingsError` on bad ones."""
    env = os.environ if environ is None else environ
    get = env.get
    var_dir = Path(get("VIGIL_VAR_DIR", DEFAULT_VAR_DIR))
    kwargs: dict[str, Any] = {"var_dir": var_dir}
    if (v := get("VIGIL_HOST")) is not None:
        kwargs["host"] = v
    if (v := get("VIGIL_PORT")) is not None:
        kwargs["port"] = _parse_port("VIGIL_PORT", v)
    if v := get("VIGIL_DATABASE_URL"):
        kwargs["database_url"] = _parse_db("VIGIL_DATABASE_URL", v)
    if v := get("VIGIL_REDIS_URL"):
        kwargs["redis_url"] = _parse_url("VIGIL_REDIS_URL", v, ("redis", "rediss"))
    if (v := get("VIGIL_TIME_SCALE")) is not None:
        kwargs["time_scale"] = _parse_scale("VIGIL_TIME_SCALE", v)
    if (v := get("VIGIL_ICE_SERVERS")) is not None:
        kwargs["ice_servers"] = _parse_ice("VIGIL_ICE_SERVERS", v)
    if v := get("VIGIL_PUBLIC_URL"):
        kwargs["public_url"] = _parse_url("VIGIL_PUBLIC_URL", v, ("http", "https"))
    if (v := get("VIGIL_DEMO")) is not None:
        kwargs["demo"] = _parse_bool("VIGIL_DEMO", v)
    if (v := get("VIGIL_DEMO_PATIENTS")) is not None:
        try:
            kwargs["demo_patients"] = int(v)
        except ValueError:
            raise SettingsError(f"VIGIL_DEMO_PATIENTS={v!r}: expected an integer") from None
    if (v := get("VIGIL_LOG_LEVEL")) is not None:
        level = v.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(f"VIGIL_LOG_LEVEL={v!r}: expected DEBUG, INFO, WARNING or ERROR")
        kwargs["log_level"] = level
    secret = get("VIGIL_SECRET_KEY")
    if secret:
        if len(secret) < MIN_SECRET_KEY_CHARS:
            raise SettingsError(
                f"VIGIL_SECRET_KEY: at least {MIN_SECRET_KEY_CHARS} characters are required"
            )
        kwargs["secret_key"] = secret
    else:
        kwargs["secret_key"] = ensure_secret_key(var_dir)
    return Settings(**kwargs)
