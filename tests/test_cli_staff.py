"""The staff command line as a secretariat uses it (issue 12): right answers,
exit codes a script can trust, tables that read at 80 columns, staff words.
Everything runs the real CLI (CliRunner, and a subprocess for Ctrl-C) on real
SQLite files; sending goes to a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.cells import cell_len

from mailer.cli import cli

from .conftest import REPO, Run, assert_one_line_error, snapshot
from .smtp_server import Behaviour, smtp_server
from .test_send_cli import SECRET, assert_tempfail, import_lists, write_config

LONG_UNIT = "杭州娃哈哈集团有限公司党委办公室"
LONG_EMAIL = "dangwei.bangongshi.zhuren@hangzhou-wahaha-group.example.org"


def csv_file(tmp_path: Path, text: str, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def events(db: Path, kind: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    try:
        return [json.loads(r[0]) for r in conn.execute(
            "SELECT detail FROM events WHERE kind = ? ORDER BY id", [kind])]
    finally:
        conn.close()


# --- right answers --------------------------------------------------------------


def test_import_reports_units_created_and_group_changes_in_dry_run_too(
    run: Run, initialised: Path, tmp_path: Path
) -> None:
    first = csv_file(tmp_path, "email,unit,group\na@wx.example.org,万向集团,第九片组\n"
                     "b@wx.example.org,万向集团,第九片组\n")
    out = run("recipients", "import", str(first), "--list", "send-to").stdout
    assert "in.csv: new unit 万向集团 in 第九片组" in out
    assert "2 added, 0 updated, 0 unchanged, 1 unit created, 0 changed" in out
    moved = csv_file(tmp_path, "email,unit,group\na@wx.example.org,万向集团,第四片组\n",
                     "moved.csv")
    before = snapshot(initialised)
    dry = run("recipients", "import", str(moved), "--list", "send-to", "--dry-run").stdout
    assert "moved.csv: unit 万向集团: 片组 第九片组 → 第四片组" in dry
    assert "0 units created, 1 changed" in dry and "dry run" in dry
    assert snapshot(initialised) == before
    out = run("recipients", "import", str(moved), "--list", "send-to").stdout
    assert "unit 万向集团: 片组 第九片组 → 第四片组" in out
    [u] = json.loads(run("units", "list", "--json").stdout)
    assert u["group"] == "第四片组"


def test_one_unit_with_two_groups_in_a_file_names_both_lines(
    run: Run, initialised: Path, tmp_path: Path
) -> None:
    path = csv_file(tmp_path, "email,unit,group\na@wx.example.org,万向集团,第九片组\n"
                    "b@wx.example.org,万向集团,第四片组\n")
    before = snapshot(initialised)
    result = run("recipients", "import", str(path), "--list", "send-to", ok=False)
    assert_one_line_error(result, "1 bad row", "nothing was imported")
    assert "in.csv line 3: 万向集团 is in 片组 第四片组 here but 第九片组 on line 2" \
        in result.stderr
    assert snapshot(initialised) == before


def test_add_and_import_treat_a_look_alike_unit_alike(
    run: Run, initialised: Path, tmp_path: Path
) -> None:
    run("recipients", "add", "a@whh.example.org", "--list", "send-to", "--unit", "娃哈哈集团")
    path = csv_file(tmp_path, "email,unit\nb@whh.example.org,杭州娃哈哈集团有限公司\n")
    refused = run("recipients", "import", str(path), "--list", "send-to", ok=False)
    assert "line 2: unknown unit '杭州娃哈哈集团有限公司'; did you mean 娃哈哈集团?" \
        in refused.stderr
    added = run("recipients", "add", "b@whh.example.org", "--list", "send-to",
                "--unit", "杭州娃哈哈集团有限公司", ok=False)
    assert_one_line_error(added, "did you mean 娃哈哈集团?", "--create-units")
    out = run("recipients", "import", str(path), "--list", "send-to", "--create-units").stdout
    assert "new unit 杭州娃哈哈集团有限公司" in out
    # A 片组 given with `add` for a unit on file is applied and said, as an import does.
    out = run("recipients", "add", "c@whh.example.org", "--list", "send-to", "--unit",
              "娃哈哈集团", "--group", "第一片组").stdout
    assert "unit 娃哈哈集团: 片组 (none) → 第一片组" in out


def test_audit_counts_match_a_skip_invalid_import(
    run: Run, initialised: Path, tmp_path: Path
) -> None:
    rows = "".join(f"u{i}@wx.example.org,万向集团\n" for i in range(10))
    path = csv_file(tmp_path, "email,unit\n" + rows + "not-an-address,万向集团\n")
    out = run("recipients", "import", str(path), "--list", "send-to", "--skip-invalid").stdout
    assert "10 added, 0 updated, 0 unchanged, 1 unit created, 0 changed, 1 bad row skipped" \
        in out
    [audit] = events(initialised, "recipients.imported")
    assert (audit["added"], audit["unchanged"], audit["units_created"]) == (10, 0, 1)


def test_export_then_import_round_trips_the_whole_store_lists_included(
    run: Run, initialised: Path, tmp_path: Path, config_file: Path
) -> None:
    import_lists(run)
    # An address on both lists, and a stopped one: both must come back as they were.
    run("recipients", "add", "dangban@wanxiang.example.org", "--list", "report-to",
        "--unit", "万向集团")
    run("recipients", "remove", "dangban@youkang.example.org", "--list", "send-to")
    out = tmp_path / "all.csv"
    run("recipients", "export", "--status", "all", "-o", str(out))
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    # A fresh database from the same config.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    cfg = fresh / "config.toml"
    cfg.write_text(config_file.read_text(encoding="utf-8"), encoding="utf-8")
    cfg.chmod(0o600)
    runner = CliRunner()

    def fresh_run(*args: str) -> Result:
        result = runner.invoke(cli, ["--config", str(cfg), *args])
        assert result.exit_code == 0, result.output
        return result

    fresh_run("init")
    fresh_run("recipients", "import", str(out))  # no --list: the file's list column
    key = ("email", "unit", "group", "list_slug", "status", "name")

    def members(r: Any) -> list[tuple[Any, ...]]:
        return sorted(tuple(m[k] for k in key) for m in json.loads(
            r("recipients", "list", "--json").stdout))

    assert members(fresh_run) == members(run)
    # With --list, a row for the other list is named, not put on the wrong list.
    refused = run("recipients", "import", str(out), "--list", "send-to", ok=False)
    assert "the row is for report-to, not send-to" in refused.stderr


def test_units_rename_merge_and_set_group_are_audited(run: Run, initialised: Path) -> None:
    run("recipients", "add", "a@whh.example.org", "--list", "send-to", "--unit", "娃哈哈集团")
    run("recipients", "add", "b@whh.example.org", "--list", "send-to", "--unit", "杭州娃哈哈",
        "--create-unit")
    assert "unit 娃哈哈集团 is now called 娃哈哈" in run("units", "rename", "娃哈哈集团",
                                                        "娃哈哈").stdout
    out = run("units", "merge", "杭州娃哈哈", "娃哈哈").stdout
    assert "merged 杭州娃哈哈 into 娃哈哈: 1 address moved (b@whh.example.org)" in out
    assert "片组 (none) → 第一片组" in run("units", "set-group", "娃哈", "第一片组").stdout
    again = run("units", "set-group", "娃哈哈", "第一片组")
    assert "already in 第一片组; nothing changed" in again.stdout
    [u] = json.loads(run("units", "list", "--json").stdout)
    assert (u["name"], u["group"], u["active"]) == ("娃哈哈", "第一片组", {"send-to": 2})
    hist = json.loads(run("history", "娃哈哈", "--json").stdout)
    kinds = [e["kind"] for e in hist]
    assert {"unit.renamed", "unit.merged", "recipient.moved", "unit.changed"} <= set(kinds)


# --- exit codes -----------------------------------------------------------------


def test_usage_errors_exit_1_and_never_name_the_hidden_add(run: Run, initialised: Path,
                                                           tmp_path: Path) -> None:
    bad = run("schedule", str(tmp_path / "x.txt"), "--at", "2026/12/01 20:30", ok=False)
    assert bad.exit_code == 1
    bad = run("schedule", str(tmp_path / "x.txt"), "--at", "tomorrow", ok=False)
    assert bad.exit_code == 1
    assert "'tomorrow' is not a date and a time, written year-month-day hour:minute; " \
        'for example "2026-12-01 20:30"' in bad.stderr
    assert "schedule add" not in bad.stderr and "%Y" not in bad.stderr
    assert run("recipients", "add", ok=False).exit_code == 1
    assert run("no-such-command", ok=False).exit_code == 1
    helptext = run("unsubscribes", "--help").stdout
    assert "%Y" not in helptext and "2015-11-01" in helptext


def test_a_campaign_stopped_by_a_dead_relay_exits_75_with_the_next_step(
    run: Run, initialised: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    import_lists(run)
    issue = tmp_path / "issue.txt"
    issue.write_bytes((REPO / "tests" / "data" / "bulletin-2015-09.txt").read_bytes())
    with smtp_server(Behaviour(temp_failures=1000)) as srv:
        write_config(config_file, srv.port)
        result = run("send", str(issue), "--list", "send-to", ok=False)
    assert_tempfail(result, "14 deliveries still due", "the server deferred 14 messages",
                    "next retry 20", "(Asia/Shanghai)", "mailer send --resume 1 --wait")
    assert "Z" not in result.stderr.splitlines()[-1].split("retry")[1]


def test_ctrl_c_exits_130_with_the_command_that_continues(
    initialised: Path, config_file: Path, tmp_path: Path, run: Run
) -> None:
    import_lists(run)
    issue = tmp_path / "issue.txt"
    issue.write_bytes((REPO / "tests" / "data" / "bulletin-2015-09.txt").read_bytes())
    with smtp_server(Behaviour(silent=True)) as srv:  # accepts, never answers
        write_config(config_file, srv.port, smtp_extra="timeout = 3")
        env = {**os.environ, "MAILER_SECRET": SECRET}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config_file), "send", str(issue)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        try:
            for _ in range(200):  # the campaign's rows are written before any mail
                time.sleep(0.05)
                conn = sqlite3.connect(initialised)
                try:
                    n = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
                finally:
                    conn.close()
                if n:
                    break
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C) with 21 deliveries still due")
    assert last.endswith("continue with: mailer send --resume 1")
    assert "Traceback" not in err


def test_states_already_held_are_said_plainly(run: Run, initialised: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("MAILER_SECRET", SECRET)
    import_lists(run)
    issue = tmp_path / "issue.txt"
    issue.write_bytes((REPO / "tests" / "data" / "bulletin-2015-09.txt").read_bytes())
    run("schedule", str(issue), "--at", "2099-12-02 09:00", "--list", "send-to")
    [c] = json.loads(run("schedule", "list", "--json").stdout)
    assert c["pending"] == 14  # its audience, before any ledger row exists
    run("schedule", "cancel", "1")
    again = run("schedule", "cancel", "1")
    assert again.stdout.strip() == "campaign 1 is already cancelled; nothing changed"
    [c] = json.loads(run("log", "--json").stdout)
    assert c["started"] == "due 2099-12-02 09:00"  # never started: no start time


# --- tables ---------------------------------------------------------------------


def _wide_roster(run: Run, tmp_path: Path) -> list[tuple[str, str]]:
    pairs = [(LONG_EMAIL, LONG_UNIT), ("zs@163.com", "万向集团"),
             ("lm.secretary.office@wanxiang-group.example.org", "万向集团党委")]
    text = "email,name,unit,group\n" + "".join(
        f"{e},张三,{u},第十二片组\n" for e, u in pairs)
    run("recipients", "import", str(csv_file(tmp_path, text)), "--list", "send-to",
        "--create-units")
    return pairs


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("command", [["recipients", "list"], ["units", "list"],
                                     ["units", "show", LONG_UNIT], ["history"]])
def test_tables_fit_and_never_break_an_address_or_a_unit_name(
    run: Run, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    width: int, command: list[str],
) -> None:
    pairs = _wide_roster(run, tmp_path)
    monkeypatch.setenv("COLUMNS", str(width))
    out = run(*command).stdout
    lines = out.splitlines()
    assert all(cell_len(ln) <= width for ln in lines), out
    text = "\n".join(lines)
    for email, unit in pairs:
        if command[0] != "units" or command[1] == "show":
            if command[-1] == LONG_UNIT and email != LONG_EMAIL:
                continue
            assert email in text, (width, out)
        if command[:2] != ["units", "show"]:
            assert any(unit in ln for ln in lines), (width, out)
    wide = run(*command, "--wide").stdout
    assert "not shown" not in wide


def test_piped_tables_are_whole_without_columns_and_csv_files_have_a_bom(
    run: Run, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _wide_roster(run, tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    out = run("recipients", "list").stdout
    assert "not shown" not in out and LONG_EMAIL in out
    target = tmp_path / "list.csv"
    run("recipients", "list", "-o", str(target))
    data = target.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert {r["email"] for r in rows} >= {LONG_EMAIL}
    assert json.loads(run("units", "list", "--json").stdout)[0]["name"]


# --- staff words ----------------------------------------------------------------


def test_units_by_prefix_or_with_a_suggestion(run: Run, initialised: Path,
                                               tmp_path: Path) -> None:
    _wide_roster(run, tmp_path)
    shown = run("units", "show", "杭州娃哈哈").stdout
    assert shown.startswith(LONG_UNIT)
    both = run("units", "show", "万向", ok=False)
    assert_one_line_error(both, "'万向' begins 2 unit names: 万向集团, 万向集团党委")
    typo = run("units", "show", "万向集图", ok=False)
    assert_one_line_error(typo, "unknown unit '万向集图'; did you mean 万向集团")


def test_a_name_with_the_address_and_provider_typos(run: Run, initialised: Path,
                                                     tmp_path: Path) -> None:
    run("recipients", "add", "张三 <zs@wx.example.org>", "--list", "send-to",
        "--unit", "万向集团")
    [m] = json.loads(run("recipients", "list", "--json").stdout)
    assert (m["email"], m["name"]) == ("zs@wx.example.org", "张三")
    for typed, meant in (("a@163.con", "a@163.com"), ("b@qq.con", "b@qq.com"),
                         ("c@gmial.com", "c@gmail.com")):
        refused = run("recipients", "add", typed, "--list", "send-to", "--unit", "万向集团",
                      ok=False)
        assert_one_line_error(refused, f"did you mean {meant}?", "--as-typed")
    run("recipients", "add", "a@163.con", "--list", "send-to", "--unit", "万向集团",
        "--as-typed")
    path = csv_file(tmp_path, "email,unit\n李四 <ls@163.con>,万向集团\n")
    refused = run("recipients", "import", str(path), "--list", "send-to", ok=False)
    assert "line 2: ls@163.con: did you mean ls@163.com?" in refused.stderr
    run("recipients", "import", str(path), "--list", "send-to", "--as-typed")


def test_excel_files_and_short_rows_in_staff_words(run: Run, initialised: Path,
                                                    tmp_path: Path) -> None:
    xlsx = tmp_path / "members.xlsx"
    xlsx.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert_one_line_error(run("recipients", "import", str(xlsx), "--list", "send-to",
                              ok=False), "members.xlsx is an Excel workbook (.xlsx)", "CSV UTF-8")
    short = csv_file(tmp_path, "单位名称,片组,电子邮箱\n万向集团,第三片组\n")
    result = run("recipients", "import", str(short), "--list", "send-to", ok=False)
    assert "in.csv line 2: short row: 2 of 3 cells" in result.stderr
    assert "is not an email address" not in result.stderr


def test_every_command_is_loaded_by_its_name_only() -> None:
    """``base.COMMANDS`` names each command's module; a command missing from it
    would not exist for staff, and one pointing at the wrong module would not run."""
    import importlib

    from mailer.cli import base

    for module in set(base.COMMANDS.values()):
        importlib.import_module(f"mailer.cli.{module}")
    assert set(cli.commands) == set(base.COMMANDS)
    for name, command in cli.commands.items():
        assert command.callback is not None
        assert command.callback.__module__ == f"mailer.cli.{base.COMMANDS[name]}", name


def test_a_send_loads_neither_the_typesetter_nor_the_readers_it_does_not_need() -> None:
    """`mailer send` on a .txt issue, in a fresh interpreter: the PDF typesetter, the
    Word and PDF readers, the IMAP client and the web server stay unloaded."""
    probe = (
        "import sys\n"
        "from mailer.cli.base import cli\n"
        "cli.main(['send', '--help'], standalone_mode=False)\n"
        "heavy = ('weasyprint', 'docx', 'pdfplumber', 'imapclient', 'flufl.bounce',\n"
        "         'uvicorn', 'starlette', 'apscheduler')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "print('mailer.cli.sending' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60, check=True)
    assert out.stdout.splitlines()[-2:] == ["[]", "True"], out.stdout + out.stderr
