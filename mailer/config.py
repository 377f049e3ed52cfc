"""Configuration: one TOML file plus the environment, loaded into frozen dataclasses.

The file is found by ``--config PATH``, else ``$MAILER_CONFIG``, else ``./config.toml``.
Relative paths inside it are relative to the file, so a daemon started from any
directory reads the same database. Secrets never have to live in the file: the SMTP
password comes only from ``MAILER_SMTP_PASSWORD``; the signing secret from
``MAILER_SECRET`` or a 0600 file named by ``web.secret_file``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import string
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

from .errors import ConfigError, InvalidInput, UnknownList
from .models import Role
from .validate import normalise_email

ENV_CONFIG = "MAILER_CONFIG"
ENV_PASSWORD = "MAILER_SMTP_PASSWORD"
ENV_SECRET = "MAILER_SECRET"
ENV_PREVIOUS_SECRET = "MAILER_PREVIOUS_SECRET"
ENV_IMAP_PASSWORD = "MAILER_IMAP_PASSWORD"
TLS_MODES = ("starttls", "tls", "none")
PDF_MODES = ("attach", "link", "none")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class ListConfig:
    slug: str
    role: Role
    title: str
    footer_label: str
    allow_unsubscribe: bool
    collective_label: str | None = None  # printed on the 发： line instead of every unit
    # The PDF edition in this list's email: attached, linked (…/w/<token>/pdf), or neither.
    pdf: str = "link"


def default_pdf_mode(role: Role) -> str:
    """Superior bodies print and file the 简报: they get the PDF attached; member
    units get a link, so every member's mailbox does not carry the file."""
    return "attach" if role is Role.REPORT_TO else "link"


@dataclass(frozen=True)
class SenderConfig:
    address: str
    name: str
    reply_to: str | None


@dataclass(frozen=True)
class SMTPConfig:
    host: str
    port: int
    tls: str
    username: str | None
    concurrency: int
    timeout: float
    messages_per_connection: int = 0  # 0: keep a connection as long as it works
    rate_limit: float = 0.0  # messages per second over all connections; 0: no limit

    @property
    def password(self) -> str | None:
        # Read at use time so a daemon picks up the environment it was started with.
        return os.environ.get(ENV_PASSWORD) or None


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key for unsubscribe tokens; ``key_id`` travels in the token so a
    rotated-out key can still be recognised until ``valid_until`` (a UTC instant)."""

    key_id: str
    secret: bytes = field(repr=False)
    valid_until: dt.datetime | None = None


@dataclass(frozen=True)
class WebConfig:
    base_url: str
    host: str
    port: int
    secret_file: Path | None
    key_id: str = "k1"
    previous_secret_file: Path | None = None
    previous_key_id: str | None = None
    previous_valid_until: dt.date | None = None
    failed_checks_per_minute: int = 30
    inline_secret: str | None = field(default=None, repr=False)
    # Peers whose X-Forwarded-For is believed; none by default.
    trusted_proxies: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class SendingConfig:
    """How a campaign paces itself and retries."""

    subject: str  # a template: {label} {title} {year} {number} {total_number} {organisation}
    per_hour: int  # 0: no quota
    per_day: int
    first_retry: float  # seconds before the first retry; doubles each time
    max_retry: float  # the longest wait between two tries
    lifetime: float  # seconds after the first try when a deferred delivery fails
    # `mailer send` at a terminal asks before mailing more people than this (0: always).
    confirm_above: int = 100


@dataclass(frozen=True)
class ScheduleConfig:
    timezone: str
    late_limit: float  # seconds: an overdue campaign older than this is marked missed
    require_approval: bool
    issues_dir: Path | None  # watched folder
    # How often the daemon looks at the campaigns table and the folder: a pause,
    # a cancel or a new schedule from the CLI takes effect within this time.
    poll_seconds: float = 1.0


@dataclass(frozen=True)
class BouncesConfig:
    """[bounces]: the VERP base address and the mailbox bounces come back to."""

    address: str  # VERP base: bounces+c12-r345-<mac>@example.org
    imap_host: str
    imap_port: int
    imap_tls: str  # "tls", "starttls" or "none" (none only for a loopback host)
    imap_user: str | None
    folder: str = "INBOX"
    processed_folder: str | None = None  # None: processed mail stays, flagged
    aside_folder: str | None = None  # forged, unknown, foreign; None: flagged in place
    delete_processed: bool = False
    poll_minutes: float = 10.0  # 0: the daemon does not poll
    soft_threshold: float = 5.0
    score_stale_days: float = 7.0
    max_message_kb: int = 2048
    imap_timeout: float = 30.0
    # The CA certificate(s) (PEM) the mailbox's certificate must chain to, instead of
    # the system's: for a mailbox with a private CA. None: the system's public CAs.
    imap_ca_file: Path | None = None

    @property
    def imap_password(self) -> str | None:
        return os.environ.get(ENV_IMAP_PASSWORD) or None


SUBJECT_FIELDS = ("label", "title", "year", "number", "total_number", "organisation")


@dataclass(frozen=True)
class Config:
    path: Path
    database: Path
    sender: SenderConfig
    smtp: SMTPConfig
    web: WebConfig
    timezone: str
    contact: str
    lists: tuple[ListConfig, ...]
    sending: SendingConfig
    schedule: ScheduleConfig
    bounces: BouncesConfig | None = None  # no [bounces]: fixed envelope sender, no intake

    def list(self, slug: str) -> ListConfig:
        for lc in self.lists:
            if lc.slug == slug:
                return lc
        raise UnknownList(slug, [lc.slug for lc in self.lists])

    def signing_keys(self) -> tuple[SigningKey, ...]:
        """The current token key first, then the previous one while it is still valid
        (until the end of ``web.previous_valid_until`` in the configured time zone)."""
        keys = [SigningKey(self.web.key_id, self.secret())]
        w = self.web
        if w.previous_key_id and w.previous_valid_until:
            env = os.environ.get(ENV_PREVIOUS_SECRET)
            if env:
                old = env
            elif w.previous_secret_file is not None:
                old = _read_secret_file(w.previous_secret_file)
            else:
                raise ConfigError(
                    f"{self.path.name}: web.previous_key_id is set but there is no previous "
                    f"secret; set web.previous_secret_file or ${ENV_PREVIOUS_SECRET}"
                )
            end = dt.datetime.combine(
                w.previous_valid_until + dt.timedelta(days=1), dt.time(),
                zoneinfo.ZoneInfo(self.timezone),
            ).astimezone(dt.UTC)
            keys.append(SigningKey(w.previous_key_id, old.encode(), end))
        return tuple(keys)

    def secret(self) -> bytes:
        """The current HMAC key for unsubscribe tokens: environment, else the secret file."""
        env = os.environ.get(ENV_SECRET)
        if env:
            value = env
            where = f"${ENV_SECRET}"
        elif self.web.secret_file is not None:
            value = _read_secret_file(self.web.secret_file)
            where = str(self.web.secret_file)
        elif self.web.inline_secret:
            value = self.web.inline_secret
            where = f"{self.path.name}: web.secret"
        else:
            raise ConfigError(
                f"{self.path.name}: no signing secret; set ${ENV_SECRET} or web.secret_file "
                "(a file with mode 0600 holding a long random string)"
            )
        if len(value.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{where}: the signing secret is too short; use at least "
                f"{MIN_SECRET_BYTES} random characters"
            )
        return value.encode()


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return Path("config.toml")


def load(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration; every problem is one ConfigError line."""
    path = find_config_path(explicit)
    if not path.exists():
        raise ConfigError(
            f"{path}: config file not found; copy config.example.toml to {path} and edit it, "
            f"or pass --config PATH (or set ${ENV_CONFIG})"
        )
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the config file must be saved as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse(data, path)


T = TypeVar("T")


class _Table:
    """A TOML table being read; every error names the key path and the file."""

    def __init__(self, data: Mapping[str, Any], prefix: str, file: str) -> None:
        self.data = data
        self.prefix = prefix
        self.file = file
        self.used: set[str] = set()

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.prefix}{key}: {message}")

    def _get(self, key: str, default: T, kind: type, kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is _REQUIRED:
                raise self.error(key, f"missing; add {kind_name} value")
            return default
        value = self.data[key]
        # bool is an int in Python; a port of `true` is still a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind_name}, got {_show(value)}")
        return value

    @overload
    def text(self, key: str, default: str) -> str: ...

    @overload
    def text(self, key: str, default: None = None) -> str | None: ...

    def text(self, key: str, default: str | None = None) -> str | None:
        """A non-empty string; ``default`` when absent (``REQUIRED``: an error)."""
        value: str | None = self._get(key, default, str, "a string")
        if isinstance(value, str) and not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value: int = self._get(key, default, int, "an integer")
        if not low <= value <= high:
            raise self.error(key, f"expected an integer from {low} to {high}, got {value}")
        return value

    def number(self, key: str, default: float, *, low: float) -> float:
        self.used.add(key)
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {_show(value)}")
        if value < low:
            raise self.error(key, f"must be at least {low}, got {value}")
        return float(value)

    def date(self, key: str) -> dt.date | None:
        self.used.add(key)
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
            raise self.error(key, f"expected a date like 2027-01-31, got {_show(value)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, default, bool, "true or false")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value: str = self._get(key, default, str, "a string")
        if value not in choices:
            raise self.error(
                key, f"expected one of {', '.join(map(repr, choices))}, got {_show(value)}"
            )
        return value

    def networks(self, key: str) -> tuple[IPNetwork, ...]:
        """A list of IP addresses or CIDR networks; an address is its own /32 or /128."""
        value: list[Any] = self._get(key, [], list, "a list of IP addresses or networks")
        out: list[IPNetwork] = []
        for i, item in enumerate(value):
            where = f"{key}[{i}]"
            if not isinstance(item, str):
                raise self.error(where, f'expected a string like "10.0.0.0/8", got {_show(item)}')
            try:
                out.append(ipaddress.ip_network(item.strip()))
            except ValueError as e:
                if "host bits set" in str(e):
                    net = ipaddress.ip_network(item.strip(), strict=False)
                    raise self.error(where, f"{_show(item)} has host bits set; write {net}"
                                     ) from None
                raise self.error(where, f"{_show(item)} is not an IP address or network "
                                 '(like "127.0.0.1" or "10.0.0.0/8"; no host names)') from None
        return tuple(out)

    def table(self, key: str) -> _Table:
        value = self._get(key, {}, dict, "a table")
        return _Table(value, f"{self.prefix}{key}.", self.file)

    def no_unknown_keys(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key (known here: {known})")


# The default of a key that must be given. A str, so that text() stays typed; it is
# compared by identity, never used as a value.
_REQUIRED: str = str(object())


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


def parse(data: Mapping[str, object], path: Path) -> Config:
    """Validate already-parsed TOML; ``path`` anchors relative paths and error messages."""
    base = path.resolve().parent
    root = _Table(data, "", path.name)

    def rel(p: str) -> Path:
        return (base / p).resolve() if not os.path.isabs(p) else Path(p)

    db = root.table("database")
    database = rel(db.text("path", "mailer.db"))
    db.no_unknown_keys()

    snd = root.table("sender")
    sender = SenderConfig(
        address=snd.text("address", _REQUIRED),
        name=snd.text("name", _REQUIRED),
        reply_to=snd.text("reply_to", None),
    )
    snd.no_unknown_keys()
    for key, value in (("address", sender.address), ("reply_to", sender.reply_to)):
        if value is not None:
            _check_address(snd, key, value)
    if any(ch in sender.name for ch in "\r\n"):
        raise snd.error("name", "must be on one line")

    sm = root.table("smtp")
    if "password" in sm.data:
        raise sm.error(
            "password",
            f"the SMTP password is read only from ${ENV_PASSWORD}; remove it from the file",
        )
    tls = sm.choice("tls", "starttls", TLS_MODES)
    smtp = SMTPConfig(
        host=sm.text("host", "127.0.0.1"),
        port=sm.integer("port", {"starttls": 587, "tls": 465, "none": 25}[tls], low=1, high=65535),
        tls=tls,
        username=sm.text("username", None),
        concurrency=sm.integer("concurrency", 4, low=1, high=64),
        timeout=sm.number("timeout", 30.0, low=0.1),
        messages_per_connection=sm.integer("messages_per_connection", 0, low=0, high=10**9),
        rate_limit=sm.number("rate_limit", 0.0, low=0.0),
    )
    sm.no_unknown_keys()

    wb = root.table("web")
    secret_file = wb.text("secret_file", None)
    previous_file = wb.text("previous_secret_file", None)
    web = WebConfig(
        base_url=wb.text("base_url", "http://127.0.0.1:8025").rstrip("/"),
        host=wb.text("host", "127.0.0.1"),
        port=wb.integer("port", 8025, low=1, high=65535),
        secret_file=rel(secret_file) if secret_file else None,
        key_id=wb.text("key_id", "k1"),
        previous_secret_file=rel(previous_file) if previous_file else None,
        previous_key_id=wb.text("previous_key_id", None),
        previous_valid_until=wb.date("previous_valid_until"),
        failed_checks_per_minute=wb.integer("failed_checks_per_minute", 30, low=1, high=10**6),
        inline_secret=wb.text("secret", None),
        trusted_proxies=wb.networks("trusted_proxies"),
    )
    wb.no_unknown_keys()
    for key in ("key_id", "previous_key_id"):
        value = getattr(web, key)
        if value is not None and not (value.isascii() and value.isalnum()):
            raise wb.error(key, "use only ASCII letters and digits (it travels in links)")
    if web.previous_key_id and web.previous_key_id == web.key_id:
        raise wb.error("previous_key_id", "must differ from web.key_id")
    if bool(web.previous_key_id) != bool(web.previous_valid_until):
        raise wb.error(
            "previous_valid_until" if web.previous_key_id else "previous_key_id",
            "set both web.previous_key_id and web.previous_valid_until, or neither",
        )
    if not web.base_url.startswith(("https://", "http://")):
        raise wb.error("base_url", f"expected an http(s) URL, got {_show(web.base_url)}")

    sch = root.table("schedule")
    timezone = sch.text("timezone", "Asia/Shanghai")
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise sch.error("timezone", f"unknown time zone {_show(timezone)}") from None
    issues_dir = sch.text("issues_dir", None)
    schedule = ScheduleConfig(
        timezone=timezone,
        late_limit=sch.number("late_limit_hours", 24.0, low=0.0) * 3600,
        require_approval=sch.flag("require_approval", False),
        issues_dir=rel(issues_dir) if issues_dir else None,
        poll_seconds=sch.number("poll_seconds", 1.0, low=0.1),
    )
    sch.no_unknown_keys()

    snd2 = root.table("sending")
    subject = snd2.text("subject", "{label}")
    _check_template(snd2, "subject", subject)
    retry = root.table("retry")
    sending = SendingConfig(
        subject=subject,
        per_hour=snd2.integer("per_hour", 0, low=0, high=10**9),
        per_day=snd2.integer("per_day", 0, low=0, high=10**9),
        first_retry=retry.number("first_delay", 60.0, low=0.0),
        max_retry=retry.number("max_delay", 3600.0, low=0.0),
        lifetime=retry.number("lifetime_hours", 24.0, low=0.0) * 3600,
        confirm_above=snd2.integer("confirm_above", 100, low=0, high=10**9),
    )
    snd2.no_unknown_keys()
    retry.no_unknown_keys()

    ct = root.table("contact")
    contact = ct.text("line", f"{sender.name} {sender.reply_to or sender.address}")
    ct.no_unknown_keys()

    lists = _parse_lists(root.table("lists"))
    bounces = _parse_bounces(root, rel) if "bounces" in root.data else None
    root.no_unknown_keys()

    if web.inline_secret:
        _refuse_if_readable(path, "web.secret")
    return Config(
        path=path,
        database=database,
        sender=sender,
        smtp=smtp,
        web=web,
        timezone=timezone,
        contact=contact,
        lists=lists,
        sending=sending,
        schedule=schedule,
        bounces=bounces,
    )


_DEFAULT_LISTS: dict[str, dict[str, Any]] = {
    "report-to": {"role": Role.REPORT_TO, "title": "简报报送名单", "footer_label": "报"},
    "send-to": {"role": Role.SEND_TO, "title": "简报发送名单", "footer_label": "发"},
}


def _parse_lists(tbl: _Table) -> tuple[ListConfig, ...]:
    slugs = list(dict.fromkeys([*_DEFAULT_LISTS, *tbl.data]))
    out = []
    for slug in slugs:
        lt = tbl.table(slug)
        default = _DEFAULT_LISTS.get(slug, {})
        role = Role(lt.choice("role", default.get("role", _REQUIRED), tuple(Role)))
        out.append(
            ListConfig(
                slug=slug,
                role=role,
                title=lt.text("title", default.get("title", _REQUIRED)),
                footer_label=lt.text("footer_label", default.get("footer_label", _REQUIRED)),
                # Superior bodies are official recipients: only staff change them.
                allow_unsubscribe=lt.flag("allow_unsubscribe", role is not Role.REPORT_TO),
                collective_label=lt.text("collective_label", None),
                pdf=lt.choice("pdf", default_pdf_mode(role), PDF_MODES),
            )
        )
        lt.no_unknown_keys()
        if not slug.replace("-", "").isalnum() or not slug.isascii():
            raise tbl.error(slug, "a list name may use only ASCII letters, digits and '-'")
    tbl.no_unknown_keys()
    return tuple(out)


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def _parse_bounces(root: _Table, rel: Callable[[str], Path]) -> BouncesConfig:
    b = root.table("bounces")
    if "imap_password" in b.data:
        raise b.error("imap_password", f"the IMAP password is read only from "
                                       f"${ENV_IMAP_PASSWORD}; remove it from the file")
    address = b.text("address", _REQUIRED)
    _check_address(b, "address", address)
    local = address.rpartition("@")[0]
    if not address.isascii() or "+" in local:
        raise b.error("address", "use a plain ASCII address without '+' (the VERP part "
                                 "is added after a '+')")
    tls = b.choice("imap_tls", "tls", TLS_MODES)
    host = b.text("imap_host", "127.0.0.1")
    if tls == "none" and not is_loopback(host):
        raise b.error("imap_tls", f'"none" sends the password in clear; it is allowed only '
                                  f'for a local host, not {_show(host)}; use "tls" or '
                                  '"starttls"')
    processed = b.text("processed_folder", None)
    folder = b.text("folder", "INBOX")
    if processed == folder:
        raise b.error("processed_folder", "must differ from bounces.folder")
    cfg = BouncesConfig(
        address=address,
        imap_host=host,
        imap_port=b.integer("imap_port", {"tls": 993, "starttls": 143, "none": 143}[tls],
                            low=1, high=65535),
        imap_tls=tls,
        imap_user=b.text("imap_user", None),
        folder=folder,
        processed_folder=processed,
        aside_folder=b.text("aside_folder", None),
        delete_processed=b.flag("delete_processed", False),
        poll_minutes=b.number("poll_minutes", 10.0, low=0.0),
        soft_threshold=b.number("soft_threshold", 5.0, low=1.0),
        score_stale_days=b.number("score_stale_days", 7.0, low=1.0),
        max_message_kb=b.integer("max_message_kb", 2048, low=1, high=1 << 20),
        imap_timeout=b.number("imap_timeout", 30.0, low=0.1),
        imap_ca_file=rel(ca_file) if (ca_file := b.text("imap_ca_file", None)) else None,
    )
    b.no_unknown_keys()
    if cfg.delete_processed and cfg.processed_folder:
        raise b.error("delete_processed", "set either processed_folder or delete_processed, "
                                          "not both")
    if cfg.imap_ca_file is not None and tls == "none":
        raise b.error("imap_ca_file", 'has no use with imap_tls = "none" (no certificate is '
                                      'checked); remove it or use "tls" or "starttls"')
    return cfg


def is_loopback(host: str) -> bool:
    """localhost or a loopback IP address: a relay or mailbox on this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_template(tbl: _Table, key: str, value: str) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as e:
        raise tbl.error(key, f"not a valid template ({e}); write fields as {{label}}") from None
    for name in names:
        if name not in SUBJECT_FIELDS:
            raise tbl.error(key, f"unknown field {{{name}}}; use {', '.join(SUBJECT_FIELDS)}")


def _check_address(tbl: _Table, key: str, value: str) -> None:
    try:
        normalise_email(value)
    except InvalidInput as e:  # re-anchor the message on the key path
        raise tbl.error(key, str(e)) from None


def _refuse_if_readable(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: holds a secret ({what}) but is readable by group/others "
            f"(mode {mode:04o}); run `chmod 600 {path}`"
        )


def _read_secret_file(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: secret file not found; create it with "
            f"`python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > {path}; "
            f"chmod 600 {path}`"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the secret file: {e.strerror}") from None
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the secret file is readable by group/others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )
    return text

