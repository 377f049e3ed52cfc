from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mailer import config
from mailer.errors import ConfigError
from mailer.models import Role

from .conftest import BASE_URL, CONFIG, REPO, SENDER, Run, assert_one_line_error


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_example_config_loads_and_explains_every_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    shutil.copy(REPO / "config.example.toml", path)
    cfg = config.load(path)
    assert cfg.database == tmp_path / "mailer.db"  # relative to the config file
    assert cfg.sender.name == "杭州市新经济与新社会组织党务工作者协会"
    assert cfg.smtp.tls == "starttls" and cfg.smtp.port == 587
    assert cfg.timezone == "Asia/Shanghai"
    assert cfg.web.secret_file == tmp_path / "secret.key"
    assert cfg.list("report-to").role is Role.REPORT_TO
    assert not cfg.list("report-to").allow_unsubscribe
    assert cfg.list("send-to").allow_unsubscribe
    assert cfg.list("send-to").collective_label == "协会会员"
    # Every key set in the example has a comment right above it or its table.
    lines = (REPO / "config.example.toml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = lines[i - 1]
            assert above.startswith("#") or above.startswith("["), f"no comment for {line!r}"


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, CONFIG))
    assert cfg.database == tmp_path / "data" / "mailer.db"
    assert cfg.timezone == "Asia/Shanghai"
    assert [lc.slug for lc in cfg.lists] == ["report-to", "send-to"]
    assert cfg.list("report-to").footer_label == "报"
    assert cfg.schedule.poll_seconds == 1.0


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        write(d, CONFIG)
    monkeypatch.chdir(a)
    monkeypatch.delenv(config.ENV_CONFIG, raising=False)
    assert config.load().path == Path("config.toml")
    assert config.load().database == a / "data" / "mailer.db"
    monkeypatch.setenv(config.ENV_CONFIG, str(b / "config.toml"))
    assert config.load().database == b / "data" / "mailer.db"
    assert config.load(a / "config.toml").database == a / "data" / "mailer.db"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("port = 2525", 'port = "abc"', 'config.toml: smtp.port: expected an integer, got "abc"'),
        ("port = 2525", "port = 70000", "config.toml: smtp.port: expected an integer from 1"),
        ('tls = "none"', 'tls = "ssl"', "config.toml: smtp.tls: expected one of 'starttls'"),
        ('tls = "none"', 'tls = "none"\nhots = "x"', "config.toml: smtp.hots: unknown key"),
        (f'address = "{SENDER}"', 'address = "bulletin@"', "sender.address: "),
        ("[web]", '[schedule]\ntimezone = "Mars/Base"\n[web]', "schedule.timezone: unknown"),
        ("[web]", "[schedule]\npoll_seconds = 0\n[web]",
         "schedule.poll_seconds: must be at least 0.1, got 0"),
        ('footer_label = "发"', "footer_label = 1", "lists.send-to.footer_label: expected a"),
        ('tls = "none"', 'tls = "none"\npassword = "x"', "MAILER_SMTP_PASSWORD"),
        (f'base_url = "{BASE_URL}"', 'base_url = "bulletin"', "web.base_url"),
        ("[web]", '[web]\ntrusted_proxies = "127.0.0.1"',
         "web.trusted_proxies: expected a list of IP addresses or networks"),
        ("[web]", '[web]\ntrusted_proxies = ["127.0.0.1", "proxy.local"]',
         'web.trusted_proxies[1]: "proxy.local" is not an IP address or network'),
        ("[web]", '[web]\ntrusted_proxies = ["10.0.0.1/8"]',
         'web.trusted_proxies[0]: "10.0.0.1/8" has host bits set; write 10.0.0.0/8'),
        ("[web]", "[web]\ntrusted_proxies = [1]", "web.trusted_proxies[0]: expected a string"),
    ],
)
def test_wrong_value_is_one_line_naming_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in CONFIG
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, CONFIG.replace(old, new, 1)))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_trusted_proxies_default_none_and_take_addresses_and_networks(tmp_path: Path) -> None:
    import ipaddress

    assert config.load(write(tmp_path, CONFIG)).web.trusted_proxies == ()
    text = CONFIG.replace("[web]", '[web]\ntrusted_proxies = ["127.0.0.1", "::1", "10.0.0.0/8"]')
    assert config.load(write(tmp_path, text)).web.trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("10.0.0.0/8"),
    )


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, CONFIG + "\n[smtp\n"))
    with pytest.raises(ConfigError, match=r"config file not found; copy config\.example\.toml"):
        config.load(tmp_path / "nope.toml")


def test_inline_secret_requires_private_file(tmp_path: Path) -> None:
    text = CONFIG.replace("[web]", '[web]\nsecret = "0123456789abcdef0123"')
    with pytest.raises(ConfigError, match=r"readable by group/others.*chmod 600"):
        config.load(write(tmp_path, text, mode=0o644))
    cfg = config.load(write(tmp_path, text, mode=0o600))
    assert cfg.secret() == b"0123456789abcdef0123"


def test_secret_from_env_or_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV_SECRET, raising=False)
    text = CONFIG.replace("[web]", '[web]\nsecret_file = "secret.key"')
    cfg = config.load(write(tmp_path, text, mode=0o644))  # no secret inside: 0644 is fine
    with pytest.raises(ConfigError, match="secret file not found"):
        cfg.secret()
    key = tmp_path / "secret.key"
    key.write_text("s" * 40 + "\n")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        cfg.secret()
    key.chmod(0o600)
    assert cfg.secret() == b"s" * 40
    monkeypatch.setenv(config.ENV_SECRET, "e" * 32)
    assert cfg.secret() == b"e" * 32
    monkeypatch.setenv(config.ENV_SECRET, "short")
    with pytest.raises(ConfigError, match="too short"):
        cfg.secret()


def test_password_only_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config.load(write(tmp_path, CONFIG))
    monkeypatch.delenv(config.ENV_PASSWORD, raising=False)
    assert cfg.smtp.password is None
    monkeypatch.setenv(config.ENV_PASSWORD, "pw")
    assert cfg.smtp.password == "pw"


def test_cli_reports_config_errors_in_one_line(run: Run, config_file: Path) -> None:
    config_file.write_text(CONFIG.replace("port = 2525", 'port = "abc"'), encoding="utf-8")
    assert_one_line_error(run("init", ok=False), 'smtp.port: expected an integer, got "abc"')
    config_file.unlink()
    assert_one_line_error(run("recipients", "list", ok=False), "config file not found")


def test_signing_keys_with_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    monkeypatch.setenv(config.ENV_SECRET, "n" * 32)
    monkeypatch.delenv(config.ENV_PREVIOUS_SECRET, raising=False)
    cfg = config.load(write(tmp_path, CONFIG))
    assert [k.key_id for k in cfg.signing_keys()] == ["k1"]
    old = tmp_path / "old.key"
    old.write_text("o" * 32)
    old.chmod(0o600)
    text = CONFIG.replace("[web]", '[web]\nkey_id = "k2"\nprevious_key_id = "k1"\n'
                          'previous_secret_file = "old.key"\nprevious_valid_until = 2027-01-31')
    keys = config.load(write(tmp_path, text)).signing_keys()
    assert [(k.key_id, k.secret) for k in keys] == [("k2", b"n" * 32), ("k1", b"o" * 32)]
    # Valid through 31 January in Shanghai: until 2027-01-31 16:00 UTC.
    assert keys[1].valid_until == dt.datetime(2027, 1, 31, 16, 0, tzinfo=dt.UTC)
    with pytest.raises(ConfigError, match="set both"):
        config.load(write(tmp_path, CONFIG.replace("[web]", '[web]\nprevious_key_id = "k0"')))
    with pytest.raises(ConfigError, match=r"web\.key_id: use only ASCII"):
        config.load(write(tmp_path, CONFIG.replace("[web]", '[web]\nkey_id = "k.1"')))


# --- [bounces] ------------------------------------------------------------------

BOUNCES_MIN = '\n[bounces]\naddress = "bounces@example.org"\nimap_host = "imap.example.org"\n'


def _bounces_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + BOUNCES_MIN + extra, encoding="utf-8")
    return path


def test_the_example_bounces_table_parses_when_uncommented(tmp_path: Path) -> None:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text("utf-8")
    start = example.index("# [bounces]")
    end = example.index("\n[contact]")
    block = "\n".join(line[2:] if (line.startswith("# ") and "=" in line) or
                      line.startswith("# [") else line
                      for line in example[start:end].splitlines())
    path = tmp_path / "config.toml"
    path.write_text(example[:start] + block + example[end:], encoding="utf-8")
    cfg = config.load(path)
    assert cfg.bounces is not None
    assert cfg.bounces.address == "bounces@example.org"
    assert (cfg.bounces.imap_tls, cfg.bounces.imap_port) == ("tls", 993)
    assert cfg.bounces.processed_folder == "Processed" and cfg.bounces.poll_minutes == 10


def test_bounces_defaults_and_refusals(tmp_path: Path) -> None:
    cfg = config.load(_bounces_config(tmp_path, ""))
    assert cfg.bounces is not None and cfg.bounces.folder == "INBOX"
    assert cfg.bounces.processed_folder is None and not cfg.bounces.delete_processed
    for extra, fragment in [
        ('imap_tls = "none"\n', "allowed only for a local host"),
        ('imap_password = "x"\n', "MAILER_IMAP_PASSWORD"),
        ('processed_folder = "INBOX"\n', "must differ from bounces.folder"),
        ('processed_folder = "P"\ndelete_processed = true\n', "not both"),
        ("soft_threshold = 0\n", "at least 1"),
        ("colour = 1\n", "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            config.load(_bounces_config(tmp_path, extra))
    path = _bounces_config(tmp_path, "").read_text("utf-8").replace(
        'address = "bounces@example.org"', 'address = "b+x@example.org"')
    (tmp_path / "c2.toml").write_text(path, encoding="utf-8")
    with pytest.raises(ConfigError, match="without '\\+'"):
        config.load(tmp_path / "c2.toml")
    local = _bounces_config(tmp_path, "").read_text("utf-8").replace(
        'imap_host = "imap.example.org"', 'imap_host = "127.0.0.1"\nimap_tls = "none"')
    (tmp_path / "c3.toml").write_text(local, encoding="utf-8")
    assert config.load(tmp_path / "c3.toml").bounces.imap_port == 143  # type: ignore[union-attr]
