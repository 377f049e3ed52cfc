from __future__ import annotations

import csv
import errno
import io
import json
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from mailer.store import Store

from .conftest import REPO, Run, assert_one_line_error, refuse_with, snapshot

HEADER = "email,name,unit,group\n"


def csv_file(tmp_path: Path, text: str, name: str = "list.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def members(run: Run, *args: str) -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(run("recipients", "list", "--json", *args).stdout)
    return data


# --- init and the database file ------------------------------------------------


def test_init_creates_private_wal_database_with_both_lists(run: Run, db_path: Path) -> None:
    out = run("init").output
    assert "created" in out and "list report-to" in out and "list send-to" in out
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    lists = conn.execute(
        "SELECT slug, role, footer_label, allow_unsubscribe FROM lists ORDER BY id"
    ).fetchall()
    assert lists == [("report-to", "report-to", "报", 0), ("send-to", "send-to", "发", 1)]
    conn.close()
    with Store.open(db_path) as store:
        timeout = store.db.execute("PRAGMA busy_timeout").fetchone()[0]
    assert timeout >= 5000
    before = snapshot(db_path)
    assert "updated" in run("init").output
    assert snapshot(db_path) == before  # a second init changes nothing


def test_commands_before_init_say_so(run: Run) -> None:
    assert_one_line_error(run("recipients", "list", ok=False), "run `mailer init`")


# --- add ------------------------------------------------------------------------


def test_add_and_list(run: Run, initialised: Path) -> None:
    run("recipients", "add", "Dangban@WanXiang.Example.org", "--list", "send-to",
        "--unit", "万向集团", "--name", "李明", "--group", "第四片组", "--create-unit")
    run("recipients", "add", "office@wanxiang.example.org", "--list", "send-to",
        "--unit", "万向集团")
    rows = members(run, "--list", "send-to")
    assert [(r["email"], r["unit"], r["group"], r["status"]) for r in rows] == [
        ("dangban@wanxiang.example.org", "万向集团", "第四片组", "active"),
        ("office@wanxiang.example.org", "万向集团", "第四片组", "active"),
    ]
    table = run("recipients", "list").stdout
    assert "万向集团" in table and "李明" in table and "第四片组" in table


def test_idn_domain_kept_in_punycode_alongside(run: Run, initialised: Path) -> None:
    run("recipients", "add", "info@例子.中国", "--list", "send-to", "--unit", "例子",
        "--create-unit")
    conn = sqlite3.connect(initialised)
    assert conn.execute("SELECT email, email_ascii FROM recipients").fetchall() == [
        ("info@例子.中国", "info@xn--fsqu00a.xn--fiqs8s")
    ]
    conn.close()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["abc@", "--unit", "万向集团"], "'abc@' is not an email address"),
        (["a@b.example.org", "--unit", "杭州万向集团有限公司"], "did you mean 万向集团?"),
        (["a@b.example.org", "--unit", "万向集团", "--name", "李\r\nBcc: x@evil.example"],
         "control character"),
        (["a@b.example.org", "--unit", "万向集团", "--name", "李\x07明"], "control character"),
        (["dangban@wanxiang.example.org", "--unit", "万向集团"], "already on the send-to list"),
        (["dangban@wanxiang.example.org", "--unit", "吉利集团"], "belongs to unit '万向集团'"),
    ],
)
def test_add_refuses_bad_input_and_changes_nothing(
    run: Run, initialised: Path, args: list[str], fragment: str
) -> None:
    run("recipients", "add", "dangban@wanxiang.example.org", "--list", "send-to",
        "--unit", "万向集团", "--create-unit")
    run("recipients", "add", "x@geely.example.org", "--list", "send-to",
        "--unit", "吉利集团", "--create-unit")
    before = snapshot(initialised)
    assert_one_line_error(run("recipients", "add", *args, "--list", "send-to", ok=False),
                          fragment)
    assert snapshot(initialised) == before


def test_add_to_unknown_list(run: Run, initialised: Path) -> None:
    before = snapshot(initialised)
    result = run("recipients", "add", "a@b.example.org", "--list", "cc", "--unit", "x",
                 "--create-unit", ok=False)
    assert_one_line_error(result, "unknown list 'cc'; known lists: report-to, send-to")
    assert snapshot(initialised) == before


# --- import ---------------------------------------------------------------------


def test_import_sample_lists_and_again_changes_nothing(run: Run, initialised: Path) -> None:
    out = run("recipients", "import", str(REPO / "recipients" / "send-to.csv"),
              "--list", "send-to").stdout
    assert "14 added, 0 updated, 0 unchanged" in out
    run("recipients", "import", str(REPO / "recipients" / "report-to.csv"), "--list", "report-to")
    before = snapshot(initialised)
    out = run("recipients", "import", str(REPO / "recipients" / "send-to.csv"),
              "--list", "send-to").stdout
    assert "0 added, 0 updated, 14 unchanged" in out
    assert snapshot(initialised) == before
    report = members(run, "--list", "report-to")
    assert "省委“两新”工委" in {r["unit"] for r in report}
    units = json.loads(run("units", "list", "--json").stdout)
    kinds = {u["name"]: (u["kind"], u["group"]) for u in units}
    assert kinds["万华集团"] == ("member", "第一片组")
    assert kinds["市注会行业"] == ("member", "第七片组")
    assert kinds["省委组织部"] == ("authority", None)


def test_gbk_file_with_chinese_headers(run: Run, initialised: Path, tmp_path: Path) -> None:
    text = (
        "单位名称,联系人,电子邮箱,片组\r\n"
        "祐康集团,赵敏,dangban@youkang.example.org,第二片组\r\n"
        "老板集团,吴静,dangban@robam.example.org,第五片组\r\n"
    )
    path = csv_file(tmp_path, text, encoding="gbk")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")  # really not UTF-8
    run("recipients", "import", str(path), "--list", "send-to")
    rows = members(run)
    assert {(r["unit"], r["name"], r["group"]) for r in rows} == {
        ("祐康集团", "赵敏", "第二片组"), ("老板集团", "吴静", "第五片组"),
    }


@pytest.mark.parametrize("header", ["邮箱,姓名,单位,分组", "Email,Name,Unit,Group"])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "utf-16"])
def test_header_aliases_and_encodings(
    run: Run, initialised: Path, tmp_path: Path, header: str, encoding: str
) -> None:
    path = csv_file(tmp_path, f"{header}\na@wahaha.example.org,陈强,娃哈哈集团,第一片组\n",
                    encoding=encoding)
    run("recipients", "import", str(path), "--list", "send-to")
    assert [(r["email"], r["unit"], r["name"]) for r in members(run)] == [
        ("a@wahaha.example.org", "娃哈哈集团", "陈强")
    ]


def test_explicit_encoding(run: Run, initialised: Path, tmp_path: Path) -> None:
    path = csv_file(tmp_path, HEADER + "a@b.example.org,陈强,娃哈哈集团,\n", encoding="gbk")
    result = run("recipients", "import", str(path), "--list", "send-to", "--encoding", "utf-8",
                 ok=False)
    assert_one_line_error(result, "line 2: not valid utf-8")
    run("recipients", "import", str(path), "--list", "send-to", "--encoding", "gbk")
    assert members(run)[0]["name"] == "陈强"


BAD = (
    HEADER
    + "ok1@example.org,甲,单位甲,\n"
    + "not-an-address,乙,单位乙,\n"
    + "ok2@example.org,丙,,\n"
    + "OK1@example.org,丁,单位甲,\n"
    + "ok3@example.org,戊,单位丙,\n"
)


def test_import_is_all_or_nothing_naming_every_bad_line(
    run: Run, initialised: Path, tmp_path: Path
) -> None:
    path = csv_file(tmp_path, BAD)
    before = snapshot(initialised)
    result = run("recipients", "import", str(path), "--list", "send-to", ok=False)
    assert_one_line_error(result, "list.csv: 3 bad rows", "nothing was imported", "--skip-invalid")
    assert "list.csv line 3: 'not-an-address' is not an email address" in result.stderr
    assert "list.csv line 4: the unit name is empty" in result.stderr
    assert "list.csv line 5: ok1@example.org repeats line 2" in result.stderr
    assert snapshot(initialised) == before


def test_skip_invalid_imports_good_rows(run: Run, initialised: Path, tmp_path: Path) -> None:
    path = csv_file(tmp_path, BAD)
    result = run("recipients", "import", str(path), "--list", "send-to", "--skip-invalid")
    assert "2 added" in result.stdout and "3 bad rows skipped" in result.stdout
    assert "line 3" in result.stderr
    assert sorted(r["email"] for r in members(run)) == ["ok1@example.org", "ok3@example.org"]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_quotes_in_a_name_come_in_as_excel_wrote_them(run: Run, initialised: Path,
                                                      tmp_path: Path, delimiter: str) -> None:
    """Excel and LibreOffice double a quote inside a quoted field (RFC 4180); the
    header line says nothing of quoting, so the delimiter is the only guess."""
    rows = [["email", "name", "unit", "group"],
            ["q1@example.org", '杭州"两新"协会', "万华集团", "第一片组"],
            ["q2@example.org", 'a,b;c "d"', "单位, 二", "第一片组"]]
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    path = csv_file(tmp_path, buf.getvalue())
    assert '""' in buf.getvalue()
    run("recipients", "import", str(path), "--list", "send-to")
    got = {r["email"]: (r["name"], r["unit"]) for r in members(run)}
    assert got["q1@example.org"] == ('杭州"两新"协会', "万华集团")
    assert got["q2@example.org"] == ('a,b;c "d"', "单位, 二")


def test_dry_run_saves_nothing(run: Run, initialised: Path) -> None:
    before = snapshot(initialised)
    out = run("recipients", "import", str(REPO / "recipients" / "send-to.csv"),
              "--list", "send-to", "--dry-run").stdout
    assert "14 added" in out and "dry run: nothing was saved" in out
    assert snapshot(initialised) == before


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"name,unit\n\xe6\x9d\x8e,x\n", "missing column email"),
        (b"", "the file is empty"),
        (b"email,unit\n\x81\x20\xff\xfe\x81\x81\n", "bad.csv: neither UTF-8 nor GB18030 (GBK)"),
        # Issue files refused NUL bytes, CSVs decoded them as UTF-8 (one rule now):
        (b"email,unit\n\x81\x20\xff\xfe\x00\x81\n", "bad.csv: NUL bytes, so not a text file"),
        ("email,unit\n".encode("utf-16-le"), "UTF-16 without a BOM"),
    ],
)
def test_unreadable_files(
    run: Run, initialised: Path, tmp_path: Path, content: bytes, fragment: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    before = snapshot(initialised)
    result = run("recipients", "import", str(path), "--list", "send-to", ok=False)
    assert_one_line_error(result, fragment)
    assert snapshot(initialised) == before


def test_import_missing_file_and_unknown_list(run: Run, initialised: Path, tmp_path: Path) -> None:
    assert_one_line_error(
        run("recipients", "import", str(tmp_path / "none.csv"), "--list", "send-to", ok=False),
        "no such file",
    )
    path = csv_file(tmp_path, HEADER + "a@b.example.org,,u,\n")
    assert_one_line_error(
        run("recipients", "import", str(path), "--list", "sendto", ok=False), "unknown list"
    )


def test_import_updates_changes_and_never_revives_a_stopped_address(
    run: Run, initialised: Path, tmp_path: Path
) -> None:
    run("recipients", "import", str(csv_file(tmp_path, HEADER + "a@x.example.org,甲,单位甲,\n"
                                                      "b@x.example.org,乙,单位甲,\n")),
        "--list", "send-to")
    run("recipients", "remove", "b@x.example.org", "--list", "send-to")
    changed = csv_file(tmp_path, HEADER + "a@x.example.org,甲二,单位乙,第二片组\n"
                                          "b@x.example.org,乙,单位甲,\n", name="v2.csv")
    out = run("recipients", "import", str(changed), "--list", "send-to").stdout
    assert "1 updated, 1 unchanged" in out
    assert "a@x.example.org moved from 单位甲 to 单位乙" in out
    assert "b@x.example.org kept removed_by_staff" in out
    rows = {r["email"]: r for r in members(run)}
    assert rows["a@x.example.org"]["name"] == "甲二"
    assert rows["a@x.example.org"]["unit"] == "单位乙"
    assert rows["b@x.example.org"]["status"] == "removed_by_staff"


# --- remove, resubscribe, export ------------------------------------------------


def test_remove_keeps_the_row_and_logs_who(run: Run, initialised: Path) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    run("recipients", "remove", "dangban@wanxiang.example.org", "--reason", "已离职")
    row = members(run, "--unit", "万向集团")[0]
    assert row["status"] == "removed_by_staff" and row["source"] == "staff"
    assert len(members(run)) == 14  # nothing deleted
    before = snapshot(initialised)
    assert_one_line_error(
        run("recipients", "remove", "dangban@wanxiang.example.org", ok=False), "nothing to change"
    )
    assert_one_line_error(
        run("recipients", "remove", "nobody@example.org", ok=False), "no recipient"
    )
    assert snapshot(initialised) == before
    events = json.loads(run("history", "dangban@wanxiang.example.org", "--json").stdout)
    last = events[-1]
    assert last["kind"] == "subscription.status" and last["list"] == "send-to"
    assert last["detail"]["before"] == {"status": "active"}
    assert last["detail"]["after"] == {"status": "removed_by_staff"}
    assert last["detail"]["reason"] == "已离职"
    assert last["actor"]


def test_resubscribe_needs_a_reason(run: Run, initialised: Path) -> None:
    run("recipients", "add", "a@x.example.org", "--list", "send-to", "--unit", "单位甲",
        "--create-unit")
    run("recipients", "remove", "a@x.example.org")
    result = run("recipients", "add", "a@x.example.org", "--list", "send-to", "--unit", "单位甲",
                 ok=False)
    assert_one_line_error(result, "removed_by_staff", "mailer recipients resubscribe")
    assert run("recipients", "resubscribe", "a@x.example.org", "--list", "send-to",
               ok=False).exit_code == 1  # --reason missing: a usage error exits 1 too
    run("recipients", "resubscribe", "a@x.example.org", "--list", "send-to",
        "--reason", "单位来函")
    assert members(run)[0]["status"] == "active"


def test_export_reads_back(run: Run, initialised: Path, tmp_path: Path) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    out = tmp_path / "out.csv"
    run("recipients", "export", "--list", "send-to", "-o", str(out))
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel opens it as UTF-8
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert len(rows) == 14 and rows[0].keys() >= {"email", "name", "unit", "group"}
    before = snapshot(initialised)
    result = run("recipients", "import", str(out), "--list", "send-to").stdout
    assert "14 unchanged" in result
    assert snapshot(initialised) == before
    stdout = run("recipients", "export", "--list", "send-to").stdout
    assert stdout.splitlines()[0] == "email,name,unit,group,list,status"
    assert len(stdout.splitlines()) == 15


# --- units and history ----------------------------------------------------------


def test_units_list_and_show(run: Run, initialised: Path) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    table = run("units", "list").stdout
    assert "娃哈哈集团" in table and "第一片组" in table
    shown = run("units", "show", "西子集团").stdout
    assert "dangwei@xizi.example.org" in shown and "gonghui@xizi.example.org" in shown
    assert_one_line_error(run("units", "show", "西湖集团", ok=False), "unknown unit '西湖集团'")


def test_history_of_unit_and_address(run: Run, initialised: Path) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    run("recipients", "remove", "gonghui@xizi.example.org")
    unit_events = json.loads(run("history", "西子集团", "--json").stdout)
    kinds = [e["kind"] for e in unit_events]
    assert kinds.count("subscription.added") == 2 and kinds[-1] == "subscription.status"
    assert "removed_by_staff" in run("history", "gonghui@xizi.example.org").stdout
    assert_one_line_error(run("history", "no-such-thing", ok=False), "neither a unit")


# --- help -----------------------------------------------------------------------


def test_every_command_has_help_with_an_example(run: Run) -> None:
    import click

    from mailer.cli import cli

    def walk(cmd: click.Command, path: list[str]) -> list[list[str]]:
        found = [path]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                found += walk(sub, [*path, name])
        return found

    paths = walk(cli, [])
    assert len(paths) >= 12
    for path in paths:
        result = run(*path, "--help")
        assert "Example:" in result.stdout, f"mailer {' '.join(path)} --help has no example"
        assert "mailer " in result.stdout.split("Example:")[1], path


# --- concurrency ----------------------------------------------------------------


def test_import_waits_for_a_concurrent_writer(run: Run, initialised: Path) -> None:
    """Another connection holds the write lock; the import waits, then succeeds."""
    locked = threading.Event()
    released: list[float] = []

    def hold_lock() -> None:
        conn = sqlite3.connect(initialised, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (at, actor, kind, subject) VALUES ('t', 'x', 'k', 's')")
        locked.set()
        time.sleep(1)
        released.append(time.monotonic())
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(5)
        result = run("recipients", "import", str(REPO / "recipients" / "send-to.csv"),
                     "--list", "send-to", ok=False)
        done = time.monotonic()
    finally:
        holder.join(10)
    assert result.exit_code == 0, result.output
    assert "database is locked" not in result.output
    assert "14 added" in result.stdout
    # It started while the lock was held and ended after it was let go: by order,
    # not by how long that took.
    assert released and done > released[0]


def test_groups_sort_by_their_number() -> None:
    from mailer.store import group_order

    groups = ["第七片组", None, "第十二片组", "第二片组", "第十片组", "第一片组", "3组"]
    ordered = sorted(groups, key=group_order)
    assert ordered == ["第一片组", "第二片组", "3组", "第七片组", "第十片组", "第十二片组", None]


def test_unit_unsubscribe_and_unsubscribes_report(run: Run, initialised: Path) -> None:
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    out = run("units", "unsubscribe", "西子集团", "--list", "send-to",
              "--reason", "单位来函").stdout
    assert "unsubscribed 2 addresses of 西子集团" in out
    rows = members(run, "--unit", "西子集团")
    assert {r["status"] for r in rows} == {"unsubscribed"}
    before = snapshot(initialised)
    assert_one_line_error(run("units", "unsubscribe", "西子集团", "--list", "send-to", ok=False),
                          "no active address")
    assert snapshot(initialised) == before
    report = json.loads(run("unsubscribes", "--json").stdout)
    assert sorted(e["subject"] for e in report) == [
        "dangwei@xizi.example.org", "gonghui@xizi.example.org"]
    assert {e["detail"]["source"] for e in report} == {"staff"}
    assert json.loads(run("unsubscribes", "--since", "2999-01-01", "--json").stdout) == []
    assert "dangwei@xizi.example.org" in run("unsubscribes").stdout


def test_report_to_never_unsubscribes_itself_whatever_the_config(
    run: Run, config_file: Path, db_path: Path
) -> None:
    from mailer.errors import InvalidInput

    from .conftest import CONFIG

    config_file.write_text(CONFIG.replace("[lists.report-to]\n",
                                          "[lists.report-to]\nallow_unsubscribe = true\n"),
                           encoding="utf-8")
    run("init")
    run("recipients", "import", str(REPO / "recipients" / "report-to.csv"), "--list", "report-to")
    with Store.open(db_path) as store:
        uid = store.uid_of("zzb@sheng.example.org")
        assert uid is not None
        sub = store.find_subscription(uid, "report-to")
        assert sub is not None and not sub.allow_unsubscribe
        with pytest.raises(InvalidInput, match="changed by staff only"):
            store.unsubscribe(uid, "report-to", source="one-click", actor="web")
    assert members(run, "--list", "report-to")[0]["status"] == "active"


# --- the order of lists: report-to, copy-to, send-to ---------------------------


def test_role_rank_is_report_to_copy_to_send_to() -> None:
    from mailer.models import Role

    assert sorted(Role, key=lambda r: r.rank) == [Role.REPORT_TO, Role.COPY_TO, Role.SEND_TO]


def test_an_address_on_copy_to_and_send_to_gets_its_copy_as_copy_to(
    run: Run, config_file: Path, db_path: Path
) -> None:
    """The end block put 送 before 发 while the ledger only put report-to first, so
    an address on both a copy-to and a send-to list counted as 发. One order now."""
    import dataclasses

    from mailer import config as config_mod
    from mailer.endblock import printed
    from mailer.models import EndBlock, EndLine

    from .sample_issue import sample_issue

    with config_file.open("a", encoding="utf-8") as f:
        f.write('\n[lists.copy-to]\nrole = "copy-to"\ntitle = "简报抄送名单"\n'
                'footer_label = "送"\n')
    run("init")
    for slug in ("send-to", "copy-to", "report-to"):
        run("recipients", "add", f"{slug}@unit.example.org", "--list", slug,
            "--unit", f"{slug} 单位", "--create-unit")
    run("recipients", "add", "both@unit.example.org", "--list", "send-to", "--unit", "两者",
        "--create-unit")
    run("recipients", "add", "both@unit.example.org", "--list", "copy-to", "--unit", "两者")
    with Store.open(db_path) as store:
        assert store.audience(["send-to", "copy-to", "report-to"]) == {
            "report-to": 1, "copy-to": 2, "send-to": 1,
        }
        # An issue without an end block gets one from the lists, in that order too.
        no_end = dataclasses.replace(sample_issue(), end=EndBlock())
        block, _ = printed(store, config_mod.load(config_file), no_end)
    assert [ln.label for ln in block.lines] == ["报", "送", "发"]
    assert block.line("发") == EndLine("发", "协会会员", ("协会会员",))


def test_export_refusals_are_one_line_and_write_nothing(
    run: Run, initialised: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export wrote its file with its own copy of the atomic write, without the
    one-line refusal: a missing folder ended in a FileNotFoundError traceback."""
    run("recipients", "import", str(REPO / "recipients" / "send-to.csv"), "--list", "send-to")
    missing = tmp_path / "missing" / "x.csv"
    refused = run("recipients", "export", "-o", str(missing), ok=False)
    assert_one_line_error(refused, str(missing), "does not exist", "create it")
    assert not missing.parent.exists()
    refused = run("recipients", "export", "-o", str(tmp_path), ok=False)
    assert_one_line_error(refused, str(tmp_path), "is a folder", "give a file name")
    target = tmp_path / "x.csv"
    with monkeypatch.context() as m:  # root ignores file modes: make the folder refuse
        m.setattr("tempfile.mkstemp", refuse_with(errno.EACCES))
        refused = run("recipients", "export", "-o", str(target), ok=False)
    assert_one_line_error(refused, str(target), "permission denied")
    target.write_text("the good old one", encoding="utf-8")
    with monkeypatch.context() as m:
        m.setattr("os.replace", refuse_with(errno.ENOSPC))
        refused = run("recipients", "export", "-o", str(target), ok=False)
    assert_one_line_error(refused, str(target), "disk is full")
    assert target.read_text(encoding="utf-8") == "the good old one"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.csv")]
    run("recipients", "export", "-o", str(target))
    assert target.read_bytes().startswith(b"\xef\xbb\xbfemail,")
