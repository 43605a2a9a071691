"""Tokens: who may talk to ``hark serve``.

Every listener that can carry a credential checks one, loopback included:

- the *server token* is created on the server's first start: ``secrets.token_urlsafe``
  in a file only its owner can read (``server.token_file``, by default
  ``<home>/server.token``, mode 0600). ``hark token show`` prints it. A satellite or a
  CLI command on the same machine (same user, same home) reads the file itself; a remote
  satellite is given it (``satellite.token`` or ``hark satellite --token``);
- a *per-satellite token* (``server.tokens = {kitchen = "..."}``) admits that satellite
  name only, so one device's token can be replaced without touching the others.

A token shorter than :data:`MIN_TOKEN_CHARS` is never accepted (config load refuses it
with a clear error, and the handshake check refuses it again). The Wyoming port cannot
carry a token: it is guarded by its listen address and an address allow-list instead
(:mod:`hark.server.wyoming`).

This module needs only the standard library: a satellite-only install imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hark.config import TOKEN_MIN_CHARS
from hark.errors import ConfigError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = TOKEN_MIN_CHARS  # the same rule as config load (hark.config)
TOKEN_FILE = "server.token"
COOKIE_NAME = "hark_session"


def token_path(cfg: Any) -> Path:
    """Where the server token lives: ``server.token_file``, else ``<home>/server.token``."""
    explicit = getattr(cfg.server, "token_file", "")
    return Path(explicit).expanduser() if explicit else cfg.home_path / TOKEN_FILE


def check_token(token: str, where: str) -> None:
    """Raise :class:`ConfigError` unless ``token`` is long enough to be a secret."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            f"{where}: a token must be at least {MIN_TOKEN_CHARS} characters "
            f"(got {len(token) if isinstance(token, str) else type(token).__name__})",
            fix="make one with: python -c 'import secrets; print(secrets.token_urlsafe(24))'")


def _read(path: Path) -> str:
    token = path.read_text(encoding="utf-8").strip()
    check_token(token, str(path))
    return token


def ensure_server_token(cfg: Any) -> str:
    """The server token, created (mode 0600, written whole or not at all) if there is
    none yet. A token file that others can read is narrowed to 0600, with a warning.
    Raises :class:`ConfigError` when the file cannot be made or read, or holds a token
    too short to be one."""
    path = token_path(cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(secrets.token_urlsafe(32) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                # link, not rename: a server starting at the same moment keeps its token
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, path)
                    log.info("created the server token in %s ('hark token show' prints it)",
                             path)
            finally:
                tmp.unlink(missing_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o): narrowed to 0600", path, mode)
            path.chmod(0o600)
        return _read(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot create or read the server token {path}: {exc}",
                          fix="make hark's home writable or set server.token_file") from exc


def read_server_token(cfg: Any) -> str | None:
    """The server token of this machine's ``hark serve``, if this user can read it
    (``None`` when there is none, or it is unreadable or malformed)."""
    try:
        return _read(token_path(cfg))
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"),
                               b.encode("utf-8", "surrogatepass"))


def token_acceptable(server_token: str, tokens: Mapping[str, str], name: str,
                     token: object) -> bool:
    """Whether a satellite called ``name`` that presents ``token`` may have a session:
    the token is the server token, or ``name``'s own entry in ``tokens``. Whatever the
    peer's address (loopback included). An empty, short or non-string token never
    passes; the comparison takes the same time wherever the strings differ."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
        return False
    ok = bool(server_token) and len(server_token) >= MIN_TOKEN_CHARS \
        and _same(token, server_token)
    own = tokens.get(name) if isinstance(name, str) else None
    if isinstance(own, str) and len(own) >= MIN_TOKEN_CHARS:
        ok = _same(token, own) or ok
    return ok


def session_cookie(server_token: str) -> str:
    """The browser session cookie's value: derived from the server token (so the token
    itself is not stored in the browser, and replacing the token logs every browser
    out)."""
    return hmac.new(server_token.encode(), b"hark web session", hashlib.sha256).hexdigest()
