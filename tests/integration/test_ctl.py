"""test_ctl.py - starlingctl as an admin uses it, against a throwaway config.

Each test gets its own data directory and a config with one [host localhost],
written here so the test shows exactly what it runs against. Passwords go in
on stdin (not a tty), the scripted path.

Run: /usr/bin/python3 -m pytest tests/integration/test_ctl.py
Binaries come from $STARLING_BUILD (relative to the repo root), else build/.
"""
import hashlib
import hmac
import os
import socket
import sqlite3
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A relative $STARLING_BUILD ("build-asan") is taken from the repo root, as
# the Makefile names it; the tests run starlingctl from temp directories.
BUILD = ROOT / os.environ.get("STARLING_BUILD", "build")
CTL = BUILD / "starlingctl"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ctl:
    """A config in a temp dir plus a runner for starlingctl against it."""

    def __init__(self, tmp, extra=""):
        self.tmp = tmp
        self.data = tmp / "data"
        self.data.mkdir()
        self.port = free_port()
        self.tls_port = free_port()
        self.conf = tmp / "starling.conf"
        self.write(extra)

    def write(self, extra="", data_dir=None, hosts=("localhost",)):
        body = textwrap.dedent(f"""\
            # written by test_ctl.py
            data_dir = {data_dir or self.data}
            bind = 127.0.0.1
            c2s_ports = {self.port}
            c2s_tls_ports = {self.tls_port}
            """) + extra
        for h in hosts:
            body += f"[host {h}]\n"
        self.conf.write_text(body)

    def run(self, *args, stdin=""):
        env = dict(os.environ)
        env.pop("STARLING_CONFIG", None)
        return subprocess.run([str(CTL), "-c", str(self.conf), *args], input=stdin,
                              capture_output=True, text=True, timeout=60, env=env,
                              cwd=self.tmp)


@pytest.fixture
def ctl(tmp_path):
    if not CTL.exists():
        pytest.skip(f"{CTL} not built (make build/starlingctl)")
    return Ctl(tmp_path)


def one_sentence(err):
    """Every error is one clear line on stderr, prefixed by the tool's name."""
    lines = [l for l in err.splitlines() if l.startswith("starlingctl: ")]
    assert lines, err
    return lines[-1]


# ---- accounts ----

def test_adduser_password_from_stdin_then_users_lists_it(ctl):
    r = ctl.run("adduser", "alice@localhost", stdin="wonderland\n")
    assert r.returncode == 0, r.stderr
    assert "wonderland" not in r.stdout + r.stderr  # never echo a password
    r = ctl.run("users")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["alice@localhost"]


def test_adduser_stores_only_scram_keys_in_a_private_file(ctl):
    assert ctl.run("adduser", "alice@localhost", stdin="wonderland\n").returncode == 0
    db = ctl.data / "starling.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    raw = b"".join(p.read_bytes() for p in ctl.data.glob("starling.db*"))
    assert b"wonderland" not in raw
    with sqlite3.connect(db) as c:
        row = c.execute("SELECT sha1_iter, sha256_iter, length(sha256_stored) FROM users"
                        " WHERE host = 'localhost' AND username = 'alice'").fetchone()
    assert row == (4096, 4096, 32)


def test_adduser_normalises_the_jid(ctl):
    assert ctl.run("adduser", "Alice@LocalHost", stdin="pw\n").returncode == 0
    assert ctl.run("users").stdout.splitlines() == ["alice@localhost"]


def test_adduser_duplicate_fails(ctl):
    assert ctl.run("adduser", "alice@localhost", stdin="pw\n").returncode == 0
    r = ctl.run("adduser", "alice@localhost", stdin="other\n")
    assert r.returncode != 0
    assert "already exists" in one_sentence(r.stderr)


def stored_password_is(ctl, user, password):
    """Recompute the SCRAM-SHA-256 StoredKey (RFC 5802 §3) from a password."""
    with sqlite3.connect(ctl.data / "starling.db") as c:
        salt, it, stored = c.execute(
            "SELECT sha256_salt, sha256_iter, sha256_stored FROM users"
            " WHERE host = 'localhost' AND username = ?", (user,)).fetchone()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, it)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == stored


def test_adduser_reads_only_the_first_line(ctl):
    r = ctl.run("adduser", "alice@localhost", stdin="first\nsecond\n")
    assert r.returncode == 0, r.stderr
    assert stored_password_is(ctl, "alice", "first")


def test_adduser_empty_password_refused(ctl):
    for stdin in ("\n", ""):
        r = ctl.run("adduser", "alice@localhost", stdin=stdin)
        assert r.returncode != 0
        assert "password" in one_sentence(r.stderr)
    assert ctl.run("users").stdout == ""


def test_adduser_unknown_host_lists_configured_hosts(ctl):
    r = ctl.run("adduser", "bob@example.net", stdin="pw\n")
    assert r.returncode != 0
    msg = one_sentence(r.stderr)
    assert "example.net" in msg and "localhost" in msg


@pytest.mark.parametrize("jid", ["a@@b", "@localhost", "localhost", "alice@localhost/phone",
                                 "alice@"])
def test_adduser_bad_jid_refused(ctl, jid):
    r = ctl.run("adduser", jid, stdin="pw\n")
    assert r.returncode != 0
    one_sentence(r.stderr)
    assert "Traceback" not in r.stderr and "Segmentation" not in r.stderr


def test_passwd_changes_existing_and_refuses_missing(ctl):
    assert ctl.run("adduser", "alice@localhost", stdin="old\n").returncode == 0
    with sqlite3.connect(ctl.data / "starling.db") as c:
        before = c.execute("SELECT sha256_salt, sha256_stored FROM users").fetchone()
    r = ctl.run("passwd", "alice@localhost", stdin="new\n")
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(ctl.data / "starling.db") as c:
        after = c.execute("SELECT sha256_salt, sha256_stored FROM users").fetchone()
    assert after != before
    assert stored_password_is(ctl, "alice", "new")
    r = ctl.run("passwd", "nobody@localhost", stdin="x\n")
    assert r.returncode != 0
    assert "no such user" in one_sentence(r.stderr)


def test_deluser_then_gone(ctl):
    assert ctl.run("adduser", "alice@localhost", stdin="pw\n").returncode == 0
    assert ctl.run("adduser", "bob@localhost", stdin="pw\n").returncode == 0
    r = ctl.run("deluser", "alice@localhost")
    assert r.returncode == 0, r.stderr
    assert ctl.run("users").stdout.splitlines() == ["bob@localhost"]
    r = ctl.run("deluser", "alice@localhost")
    assert r.returncode != 0
    assert "no such user" in one_sentence(r.stderr)


def test_users_by_host_sorted(tmp_path):
    if not CTL.exists():
        pytest.skip("starlingctl not built")
    c = Ctl(tmp_path)
    c.write(hosts=("localhost", "example.org"))
    for jid in ("mallory@localhost", "alice@localhost", "zed@example.org"):
        assert c.run("adduser", jid, stdin="pw\n").returncode == 0
    assert c.run("users", "localhost").stdout.splitlines() == ["alice@localhost",
                                                                "mallory@localhost"]
    assert c.run("users", "example.org").stdout.splitlines() == ["zed@example.org"]
    assert len(c.run("users").stdout.splitlines()) == 3
    r = c.run("users", "nowhere.test")
    assert r.returncode != 0
    assert "nowhere.test" in one_sentence(r.stderr)


# ---- the live daemon ----

def test_sessions_without_daemon_says_not_running(ctl):
    r = ctl.run("sessions")
    assert r.returncode == 1
    msg = one_sentence(r.stderr)
    assert "starlingd is not running" in msg
    assert str(ctl.data / "admin.sock") in msg


def test_admin_protocol_lines_then_ok_or_error(ctl):
    """A fake daemon on the admin socket: text lines, then ok / error."""
    import threading
    path = str(ctl.data / "admin.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    seen = []

    def serve():
        for answer in (b"alice@localhost/phone\nbob@localhost/pc\nok\n",
                       b"error no session alice@localhost/tablet\n"):
            conn, _ = srv.accept()
            with conn:
                seen.append(conn.makefile("rb").readline())
                conn.sendall(answer)

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = ctl.run("sessions")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["alice@localhost/phone", "bob@localhost/pc"]
        r = ctl.run("kick", "Alice@localhost/tablet")
        assert r.returncode == 1
        assert "no session alice@localhost/tablet" in one_sentence(r.stderr)
    finally:
        t.join(10)
        srv.close()
    assert seen == [b"sessions\n", b"kick alice@localhost/tablet\n"]


def test_status_and_check_against_the_real_daemon(ctl):
    starlingd = BUILD / "starlingd"
    if not starlingd.exists():
        pytest.skip(f"{starlingd} not built")
    log = open(ctl.tmp / "starlingd.log", "w")
    d = subprocess.Popen([str(starlingd), "-c", str(ctl.conf)], stdout=log,
                         stderr=subprocess.STDOUT, cwd=ctl.tmp)
    try:
        for _ in range(100):
            r = ctl.run("status")
            if r.returncode == 0 or d.poll() is not None:
                break
            time.sleep(0.1)
        assert r.returncode == 0, r.stderr + (ctl.tmp / "starlingd.log").read_text()
        assert r.stdout.startswith("starlingd ")
        assert ctl.run("sessions").returncode == 0
        r = ctl.run("kick", "nobody@localhost/x")
        assert r.returncode == 1 and "nobody@localhost/x" in one_sentence(r.stderr)
        # Accounts can be managed while the daemon has the store open.
        assert ctl.run("adduser", "live@localhost", stdin="pw\n").returncode == 0
        r = ctl.run("check")
        assert r.returncode == 0, r.stdout
        assert "held by the running starlingd" in r.stdout
    finally:
        d.terminate()
        d.wait(10)
        log.close()


def test_kick_needs_a_full_jid(ctl):
    r = ctl.run("kick", "alice@localhost")
    assert r.returncode != 0
    assert "full JID" in one_sentence(r.stderr)


# ---- check ----

def test_check_passes_on_a_fresh_setup(ctl):
    r = ctl.run("check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().endswith("All checks passed.")
    assert "generates a self-signed" in r.stdout  # default cert paths, not there yet


def test_check_reports_missing_data_dir_with_fix(ctl):
    ctl.write(data_dir=ctl.tmp / "nope")
    r = ctl.run("check")
    assert r.returncode == 1
    assert "mkdir -p" in r.stdout
    assert "problem" in r.stdout.splitlines()[-1]


def test_check_reports_busy_port(ctl):
    with socket.socket() as s:
        s.bind(("127.0.0.1", ctl.port))
        s.listen()
        r = ctl.run("check")
    assert r.returncode == 1
    assert f"port {ctl.port}" in r.stdout and "in use" in r.stdout
    assert r.stdout.rstrip().endswith("1 problem found.")


def test_check_config_errors_with_file_and_line(ctl):
    ctl.write(extra="no_such_setting = 1\n")
    r = ctl.run("check")
    assert r.returncode == 1
    assert f"{ctl.conf}:6:" in r.stdout or "starling.conf:6:" in r.stdout


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_check_certificate_mismatch_and_wrong_host(ctl):
    cert, key, other = ctl.tmp / "c.pem", ctl.tmp / "k.pem", ctl.tmp / "o.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
            str(cert), "-days", "365", "-subj", "/CN=example.org", "-addext",
            "subjectAltName=DNS:example.org")
    openssl("genpkey", "-algorithm", "RSA", "-out", str(other))
    ctl.write(extra=f"certificate = {cert}\nprivate_key = {other}\n")
    r = ctl.run("check")
    assert r.returncode == 1
    assert "does not match" in r.stdout
    assert "does not cover host localhost" in r.stdout
    assert r.stdout.rstrip().endswith("2 problems found.")


def test_check_good_certificate_passes(ctl):
    cert, key = ctl.tmp / "c.pem", ctl.tmp / "k.pem"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
            str(cert), "-days", "365", "-subj", "/CN=localhost", "-addext",
            "subjectAltName=DNS:localhost")
    ctl.write(extra=f"certificate = {cert}\nprivate_key = {key}\n")
    r = ctl.run("check")
    assert r.returncode == 0, r.stdout
    assert "covers host localhost" in r.stdout


# ---- manners ----

def test_about_prints_every_version(ctl):
    r = ctl.run("about")
    assert r.returncode == 0
    version = (ROOT / "VERSION").read_text().strip()
    assert f"starlingctl {version}" in r.stdout
    for lib in ("OpenSSL", "SQLite", "expat", "libidn"):
        assert lib in r.stdout


def test_help_and_no_args_show_usage(ctl):
    for args in ((), ("help",)):
        r = subprocess.run([str(CTL), *args], capture_output=True, text=True)
        assert r.returncode == 0
        assert "usage: starlingctl" in r.stdout


@pytest.mark.parametrize("args", [("frobnicate",), ("adduser",), ("users", "a", "b"),
                                  ("-x", "users")])
def test_usage_errors_are_one_sentence(ctl, args):
    r = ctl.run(*args)
    assert r.returncode == 2
    one_sentence(r.stderr)


def test_missing_config_is_one_sentence(tmp_path):
    if not CTL.exists():
        pytest.skip("starlingctl not built")
    r = subprocess.run([str(CTL), "-c", str(tmp_path / "none.conf"), "users"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "cannot read the config" in one_sentence(r.stderr)
