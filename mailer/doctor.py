"""`mailer doctor`: is this installation ready to send a real bulletin?

Each check is a small function of the config returning findings: ok, warn or fail,
each one line that says what is wrong and how to fix it. The quick checks read only
local files (the config, the secret, the database); ``send``, ``schedule`` and the
daemon run them first and refuse to go on while one fails, so a config copied from
``config.example.toml`` and never edited cannot mail anyone. The network checks
(the relay, the public unsubscribe address, the bounce mailbox) are for `mailer
doctor` alone.
"""

from __future__ import annotations

import enum
import os
import stat
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from .config import ENV_PASSWORD, ENV_SECRET, Config, is_loopback
from .errors import MailerError

EXAMPLE_FILE = "config.example.toml"
URL_TIMEOUT_S = 10.0


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    check: str  # which check: "config", "modes", "secret", "database", "relay", ...
    level: Level
    text: str  # one line: what was found and, when not ok, how to fix it


def ok(check: str, text: str) -> Finding:
    return Finding(check, Level.OK, text)


def warn(check: str, text: str) -> Finding:
    return Finding(check, Level.WARN, text)


def fail(check: str, text: str) -> Finding:
    return Finding(check, Level.FAIL, text)


Check = Callable[[Config], list[Finding]]


class NotReady(MailerError):
    """A quick check failed: nothing is sent or written until it is mended."""

    def __init__(self, failures: Sequence[Finding]) -> None:
        self.failures = tuple(failures)
        more = len(failures) - 1
        tail = f" (and {more} more problem{'s' if more != 1 else ''}: `mailer doctor` " \
               "lists them)" if more else ""
        super().__init__(f"{failures[0].text}; nothing was sent or saved{tail}")


# --- the example config ------------------------------------------------------------

# The keys whose example values must never reach a member: the From address, the
# host in every unsubscribe link, the contact line under every bulletin, the relay.
EXAMPLE_KEYS = ("sender.address", "web.base_url", "contact.line", "smtp.host")


@cache
def example_values() -> dict[str, str]:
    """The values of ``EXAMPLE_KEYS`` in the shipped ``config.example.toml`` (the
    file staff copy), read from it so they are written down only once."""
    data = tomllib.loads(files("mailer").joinpath(EXAMPLE_FILE).read_text(encoding="utf-8"))
    out: dict[str, str] = {}
    for key in EXAMPLE_KEYS:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            out[key] = node
    return out


def _configured(config: Config) -> dict[str, str]:
    return {"sender.address": config.sender.address, "web.base_url": config.web.base_url,
            "contact.line": config.contact, "smtp.host": config.smtp.host}


_FIXES = {
    "sender.address": "set [sender] address to the association's own address, one your "
                      "relay may send for",
    "web.base_url": "set [web] base_url to the public https address of your unsubscribe "
                    "pages",
    "contact.line": "set [contact] line to the secretariat's real telephone and address",
    "smtp.host": "set [smtp] host to your relay (your mail provider's SMTP server)",
}


def _same(key: str, a: str, b: str) -> bool:
    if key == "contact.line":  # spacing is not what makes a contact line real
        return a.split() == b.split()
    return a.strip().rstrip("/").lower() == b.strip().rstrip("/").lower()


def _is_example(config: Config, key: str) -> bool:
    try:
        example = example_values().get(key)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return example is not None and _same(key, _configured(config)[key], example)


def check_example_values(config: Config) -> list[Finding]:
    """Any of the example file's sender, base URL, contact line or relay left in place."""
    try:
        examples = example_values()
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [warn("config", f"cannot read the packaged {EXAMPLE_FILE} to compare with "
                               f"({e}); reinstall mailer")]
    name = config.path.name
    found = [fail("config", f"{name}: {key} is still the example's {value!r}: {_FIXES[key]}")
             for key, value in _configured(config).items()
             if key in examples and _same(key, value, examples[key])]
    return found or [ok("config", f"{name}: no example value left in place "
                                  f"({', '.join(EXAMPLE_KEYS)})")]


# --- files -------------------------------------------------------------------------

def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def check_file_modes(config: Config) -> list[Finding]:
    """config.toml, the secret file and the database readable by the owner only."""
    files_: list[tuple[Path, str, Callable[[str, str], Finding]]] = [
        (config.path, "the config", warn),
        (config.database, "the database (members' addresses)", warn),
    ]
    if config.web.secret_file is not None and not os.environ.get(ENV_SECRET):
        # Readable by others it is refused outright: a fail, not a warning.
        files_.append((config.web.secret_file, "the signing secret", fail))
    out = []
    for path, what, level in files_:
        mode = _mode(path)
        if mode is None:
            continue  # a missing file is the secret's or the database's own finding
        if mode & 0o077:
            out.append(level("modes", f"{path}: {what} is readable by group/others (mode "
                                      f"{mode:04o}); run `chmod 600 {path}`"))
        else:
            out.append(ok("modes", f"{path}: mode {mode:04o}"))
    return out


def check_secret(config: Config) -> list[Finding]:
    """The key that signs unsubscribe links: present, long enough, private."""
    secret_file = config.web.secret_file
    from_env = bool(os.environ.get(ENV_SECRET))
    if not from_env and secret_file is not None:
        mode = _mode(secret_file)
        if mode is not None and mode & 0o077:
            return []  # check_file_modes already says it, with the fix
    try:
        keys = config.signing_keys()
    except MailerError as e:
        return [fail("secret", str(e))]
    where = f"${ENV_SECRET}" if from_env else str(secret_file or "web.secret")
    rotated = f"; previous key {keys[1].key_id} until {config.web.previous_valid_until}" \
        if len(keys) > 1 else ""
    return [ok("secret", f"signing secret from {where} (key {keys[0].key_id}){rotated}")]


def check_database(config: Config) -> list[Finding]:
    """The database exists, was made by `mailer init`, and has the current schema."""
    import sqlite3

    from .store.health import schema_state

    path = config.database
    if not path.exists():
        return [fail("database", f"{path}: no database; run `mailer init` (or check "
                                 f"database.path in {config.path.name})")]
    try:
        state = schema_state(path)
    except sqlite3.DatabaseError as e:
        return [fail("database", f"{path}: not a mailer database ({e}); check database.path "
                                 f"in {config.path.name}")]
    if not state.has_lists:
        return [fail("database", f"{path}: not initialised; run `mailer init`")]
    if state.pending:
        return [warn("database", f"{path}: the schema is {len(state.pending)} step"
                                 f"{'s' if len(state.pending) != 1 else ''} behind; "
                                 "`mailer init` brings it up to date (the next command would)")]
    return [ok("database", f"{path}: initialised, schema current")]


def check_password(config: Config) -> list[Finding]:
    """A configured login needs its password in the environment."""
    smtp = config.smtp
    if smtp.username is None:
        return [ok("password", "no SMTP login configured ([smtp] username not set)")]
    if smtp.password is None:
        return [fail("password", f"[smtp] username is {smtp.username!r} but ${ENV_PASSWORD} "
                                 f"is not set: `export {ENV_PASSWORD}=…` (or remove username "
                                 "for a relay that needs no login)")]
    return [ok("password", f"${ENV_PASSWORD} is set for {smtp.username}")]


def check_unsubscribe_address(config: Config) -> list[Finding]:
    """web.base_url is well formed, https and public (reachability is a network check)."""
    if _is_example(config, "web.base_url"):
        return []  # check_example_values says it, with the fix
    url = urllib.parse.urlsplit(config.web.base_url)
    host = url.hostname or ""
    if not host:
        return [fail("unsubscribe", f"web.base_url {config.web.base_url!r} has no host; "
                                    "write it as https://bulletin.your-association.org")]
    if is_loopback(host) or host.endswith(".local"):
        return [warn("unsubscribe", f"web.base_url {config.web.base_url} is on this machine: "
                                    "members cannot open their unsubscribe links; set it to "
                                    "the public https address of `mailer serve`")]
    if url.scheme != "https":
        return [warn("unsubscribe", f"web.base_url {config.web.base_url} is not https: mail "
                                    "providers' one-click unsubscribe needs https; put "
                                    "`mailer serve` behind an https proxy")]
    return [ok("unsubscribe", f"web.base_url {config.web.base_url} is a public https address")]


QUICK_CHECKS: tuple[Check, ...] = (
    check_example_values, check_file_modes, check_secret, check_database, check_password,
    check_unsubscribe_address,
)


def quick_checks(config: Config) -> list[Finding]:
    """Every check that reads only local files, in order."""
    return [f for check in QUICK_CHECKS for f in check(config)]


def preflight(config: Config) -> list[Finding]:
    """What ``send``, ``schedule`` and the daemon run first: raises ``NotReady``
    naming the first failure; returns the warnings for the caller to print."""
    found = quick_checks(config)
    failures = [f for f in found if f.level is Level.FAIL]
    if failures:
        raise NotReady(failures)
    return [f for f in found if f.level is Level.WARN]


# --- the network ---------------------------------------------------------------------

def check_unsubscribe_reachable(config: Config) -> list[Finding]:
    """GET <base_url>/healthz as a member's mail client would reach it."""
    if _is_example(config, "web.base_url"):
        return []  # not someone else's server: the example's address is no one's
    url = f"{config.web.base_url}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as answer:
            status = answer.status
    except urllib.error.HTTPError as e:
        status = e.code
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return [warn("unsubscribe", f"{url} cannot be reached ({reason}): unsubscribe links "
                                    "will not open until `mailer serve` (or `mailer run`) "
                                    "answers there")]
    if status != 200:
        return [warn("unsubscribe", f"{url} answered {status}, not mailer's 200: check that "
                                    "the proxy passes web.base_url to `mailer serve`")]
    return [ok("unsubscribe", f"{url} answers: unsubscribe links open")]


def check_bounces(config: Config, *, wait: float) -> list[Finding]:
    """The relay keeps our VERP envelope sender (only with a [bounces] table)."""
    from imapclient.exceptions import IMAPClientError

    from .bounces.envelope import check_envelope_sender
    from .bounces.intake import connect

    if config.bounces is None:
        return [ok("bounces", "no [bounces] table: bounces by mail are not read")]
    try:
        # Log in first: a mailbox that cannot be read should not cost a probe message.
        connect(config.bounces).logout()
        result = check_envelope_sender(config, wait=wait)
    except MailerError as e:
        return [fail("bounces", str(e))]
    except (OSError, IMAPClientError) as e:  # from the logout of a session that worked
        return [fail("bounces", f"bounce mailbox {config.bounces.imap_host}: {e}")]
    return [(ok if result.ok else fail)("bounces", result.message)]


def all_checks(config: Config, *, offline: bool = False, bounce_wait: float = 120.0
               ) -> list[Finding]:
    """Everything `mailer doctor` looks at; ``offline`` leaves out the network."""
    from .relay_check import check_relay

    found = quick_checks(config)
    if offline:
        return [*found, ok("network", "relay, unsubscribe address and bounce mailbox not "
                                      "checked (--offline)")]
    found += check_relay(config)
    found += check_unsubscribe_reachable(config)
    found += check_bounces(config, wait=bounce_wait)
    return found
