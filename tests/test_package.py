"""The package installs anywhere: a wheel built from this checkout, installed into a
fresh virtual environment outside it, renders the sample issue and serves the
unsubscribe pages from its own packaged templates.

The wheel is built by pip (with build isolation, as a user's ``pip wheel`` would),
the environment is a plain ``python -m venv`` that cannot see the checkout, and pip
resolves its dependencies from the wheel's own metadata. They come from the wheels
`make` keeps in ``.venv/wheels`` (downloaded once, when it installs the test venv,
from the same ``[project] dependencies``), with no index: a dependency the code
needs but the metadata lacks is missing there just the same. Without that folder
(pytest run outside `make`) they come from the package index pip is configured with.
Everything then runs from a folder outside the checkout, with ``PYTHONPATH`` removed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from .conftest import CONFIG, REPO, SAMPLE_ISSUE, made_once

SECRET = "package-secret-0123456789abcdef"
BUILD_TIMEOUT_S = 300.0  # building the wheel, making the venv, installing: each step
RUN_TIMEOUT_S = 60.0  # one command of the installed package
START_TIMEOUT_S = 60.0  # `mailer serve` answering /healthz (a loaded machine is slow)
# Wheels of the dependencies and of the build backend; see the Makefile.
WHEELS = Path(sys.prefix) / "wheels"


def _run(cmd: list[str | Path], *, cwd: Path, timeout: float,
         env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, timeout=timeout,
                          capture_output=True, text=True)
    assert done.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Installed:
    """The wheel, and the venv it was installed into."""

    def __init__(self, wheel: Path, venv: Path) -> None:
        self.wheel = wheel
        self.python = venv / "bin" / "python"
        self.mailer = venv / "bin" / "mailer"
        # Nothing that would lead back to the checkout or to the test's own venv.
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env["MAILER_SECRET"] = SECRET

    def run(self, *args: str | Path, cwd: Path) -> str:
        return _run([self.mailer, *args], cwd=cwd, timeout=RUN_TIMEOUT_S, env=self.env)

    def python_c(self, code: str, cwd: Path) -> str:
        # -I: no PYTHONPATH, no user site, and neither cwd nor a script's folder on sys.path.
        return _run([self.python, "-I", "-c", code], cwd=cwd, timeout=RUN_TIMEOUT_S,
                    env=self.env)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Built and installed once per run (``made_once``)."""
    root = made_once(tmp_path_factory, "package", _build_and_install)
    made = json.loads((root / "made.json").read_text(encoding="utf-8"))
    return Installed(Path(made["wheel"]), Path(made["venv"]))


def _build_and_install(root: Path) -> None:
    assert REPO not in root.parents
    # Build from a copy of what a build needs, so no build/ or *.egg-info left in the
    # checkout (or stale ones in it) plays a part.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "config.example.toml"):
        shutil.copy(REPO / name, src / name)
    for name in ("mailer", "templates"):
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sources: list[str | Path] = (["--no-index", "--find-links", WHEELS]
                                 if (WHEELS / ".complete").exists() else [])
    dist = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *sources,
          "--wheel-dir", dist, src], cwd=root, timeout=BUILD_TIMEOUT_S)
    (wheel,) = dist.glob("mailer-*.whl")

    # A venv without pip of its own (ensurepip is the slow part of making one); this
    # pip installs into it with --python, as into any other interpreter.
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root,
         timeout=BUILD_TIMEOUT_S)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # --no-compile: Python compiles what it imports when it imports it; byte-compiling
    # every installed module up front is most of the install's CPU time.
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
          "--quiet", "--no-compile", *sources, wheel], cwd=root, timeout=BUILD_TIMEOUT_S,
         env=env)
    (root / "made.json").write_text(json.dumps({"wheel": str(wheel), "venv": str(venv)}),
                                    encoding="utf-8")


@pytest.fixture(scope="module")
def prepared(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the checkout with a config, an initialised database and the
    sample lists imported, by the installed ``mailer`` command (once per module)."""
    work = tmp_path_factory.mktemp("package-work")
    config = work / "config.toml"
    config.write_text(CONFIG, encoding="utf-8")
    config.chmod(0o600)
    installed.run("--config", config, "init", cwd=work)
    for slug in ("send-to", "report-to"):
        csv = work / f"{slug}.csv"
        shutil.copy(REPO / "recipients" / f"{slug}.csv", csv)
        installed.run("--config", config, "recipients", "import", csv, "--list", slug, cwd=work)
    return work


@pytest.fixture
def workdir(prepared: Path, tmp_path: Path) -> Path:
    """A copy of ``prepared`` of this test's own (the config names the database by a
    relative path, so the copy uses its own)."""
    work = tmp_path / "work"
    shutil.copytree(prepared, work)
    return work


def test_the_wheel_holds_every_module_and_template(installed: Installed) -> None:
    """The packages are listed by hand in pyproject.toml (a package-dir rules out
    discovery): a new package folder under mailer/ must be added there."""
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
    wanted = {p.relative_to(REPO).as_posix() for p in (REPO / "mailer").rglob("*.py")
              if "__pycache__" not in p.parts}
    wanted |= {"mailer/py.typed", "mailer/config.example.toml"}  # read by `mailer doctor`
    wanted |= {"mailer/templates/" + p.relative_to(REPO / "templates").as_posix()
               for p in (REPO / "templates").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert wanted - names == set()
    assert {"mailer/templates/bulletin.html", "mailer/templates/web/confirm.html"} <= names
    assert not any(n.startswith(("tests/", "templates/", "bench/")) for n in names)


def test_the_installed_package_is_not_the_checkout(installed: Installed,
                                                   tmp_path: Path) -> None:
    out = installed.python_c(
        "import json, sys, mailer, mailer.render, mailer.web\n"
        "from mailer.resources import templates_dir\n"
        "print(json.dumps({'mailer': mailer.__file__, 'templates': str(templates_dir()),\n"
        "    'render': str(mailer.render.TEMPLATES_DIR), 'web': str(mailer.web.TEMPLATES),\n"
        "    'path': sys.path}))", cwd=tmp_path)
    where = json.loads(out)
    site = Path(where["mailer"]).parent.parent
    assert site.name == "site-packages"
    assert Path(where["templates"]) == site / "mailer" / "templates"
    assert Path(where["render"]) == site / "mailer" / "templates"
    assert Path(where["web"]) == site / "mailer" / "templates" / "web"
    for p in [where["mailer"], where["templates"], *where["path"]]:
        assert not Path(p).resolve().is_relative_to(REPO), p


def test_the_installed_package_renders_the_sample_issue(installed: Installed,
                                                        workdir: Path) -> None:
    issue = workdir / SAMPLE_ISSUE.name
    shutil.copy(SAMPLE_ISSUE, issue)
    out = installed.run("--config", "config.toml", "render", issue.name, "--list", "send-to",
                        "--out", "preview", cwd=workdir)
    assert "issue.html" in out
    html = (workdir / "preview" / "issue.html").read_text(encoding="utf-8")
    text = (workdir / "preview" / "issue.txt").read_text(encoding="utf-8")
    for part in (html, text):
        assert "杭州市新经济与新社会组织党务工作者协会" in part
        assert "万向职院落实党建工作责任制" in part
        assert "西子集团党建" in part
    assert "第 9 期" in html and "总第 33 期" in html
    assert "<style" in html and 'style="' in html  # bulletin.css, inlined by premailer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_installed_package_serves_an_unsubscribe_page(installed: Installed,
                                                         workdir: Path) -> None:
    email = "dangban@wanhua.example.org"
    conn = sqlite3.connect(workdir / "data" / "mailer.db")
    try:
        (uid,) = conn.execute("SELECT uid FROM recipients WHERE email = ?", [email]).fetchone()
    finally:
        conn.close()
    token = installed.python_c(
        "from pathlib import Path\n"
        "from mailer import config\n"
        "from mailer.tokens import make_token\n"
        "key = config.load(Path('config.toml')).signing_keys()[0]\n"
        f"print(make_token(key, {str(uid)!r}, 'send-to'))", cwd=workdir).strip()

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = workdir / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed.mailer), "--config", "config.toml", "serve",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=installed.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, "mailer serve exited at start"
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "mailer serve did not answer"
            time.sleep(0.1)

        page = httpx.get(f"{base}/u/{token}", timeout=5)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert '<html lang="zh-CN">' in page.text  # base.html
        assert "不再向此邮箱发送简报" in page.text  # confirm.html
        assert "万华集团" in page.text and "简报发送名单" in page.text  # _who.html
        assert "<style>" in page.text and "style-src 'sha256-" in page.headers[
            "content-security-policy"]  # style.css

        missing = httpx.get(f"{base}/u/v1.k1.bm9wZQ.AAAAAAAAAAAAAAAAAAAAAA", timeout=5)
        assert missing.status_code == 404
        assert "此链接无效或已过期" in missing.text  # not_found.html, from the wheel
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, log.read_text(encoding="utf-8", errors="replace")
