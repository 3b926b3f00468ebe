"""test_daemon_admin.py - the daemon's life cycle and starlingctl's commands.

starlingd -t checks a config; SIGHUP reloads it (and a broken file keeps the
running config); starlingctl passwd, deluser, kick, status and check act on a
running daemon. Each test keeps its config in the test.
"""
import asyncio
import signal
import subprocess
import time

from conftest import STARLINGD, Starling, sanitizer_env
from slixclient import TIMEOUT, can_login, login, run
from rawxmpp import RawClient
from test_c2s_slixmpp import _register

PW = "admin pw"


def check_config(server):
    return subprocess.run([STARLINGD, "-t", "-c", server.config], capture_output=True, text=True,
                          timeout=20, env=sanitizer_env())


def test_starlingd_t_accepts_a_good_config_and_rejects_a_bad_one():
    s = Starling()
    try:
        r = check_config(s)
        assert r.returncode == 0, r.stdout + r.stderr
        with open(s.config, "a") as f:
            f.write("c2s_portz = 5222\n")
        r = check_config(s)
        assert r.returncode == 1
        out = r.stdout + r.stderr
        # config.h: every error carries file:line and a suggestion.
        assert "starling.conf:" in out and "c2s_ports" in out, out
    finally:
        s.cleanup()


def test_sighup_reload_applies_host_options(starling):
    starling.adduser("alice@localhost", PW)
    with open(starling.config) as f:
        text = f.read()
    with open(starling.config, "w") as f:
        f.write(text.replace("register.allow = true", "register.allow = false"))
    mark = starling.log_size()
    starling.signal(signal.SIGHUP)
    assert starling.wait_log(r"reload", since=mark), starling.log()[mark:]
    assert starling.alive()

    for _ in range(20):  # the reload is asynchronous to us
        _, _, result = _register(starling, "late", "pw")
        if result.get("type") == "error":
            break
        time.sleep(0.1)
    assert result.get("type") == "error", "registration still open after reload"
    assert run(can_login(starling, "alice@localhost", PW))


def _features(starling, tls):
    c = RawClient(starling.c2s_port)
    try:
        f = c.starttls() if tls else c.open_stream()
        return {"register": f.find("{http://jabber.org/features/iq-register}register") is not None,
                "mechanisms": c.mechanisms(f),
                "max_bytes": f.findtext("{urn:xmpp:stream-limits:0}limits/"
                                        "{urn:xmpp:stream-limits:0}max-bytes")}
    finally:
        c.close()


def test_sighup_reload_changes_the_stream_features(starling):
    """The features a new stream is offered follow the configuration that
    is in force: after a reload, the host's registration, the server's
    mechanisms and its announced limits (XEP-0478) are the new ones, before
    and after STARTTLS (c2s keeps the features it serialised per host and
    stream state, and a reload must not leave the old ones in use)."""
    before = [_features(starling, tls) for tls in (False, True)]
    assert before[1]["register"]  # offered over TLS (before it only STARTTLS is: required)
    assert "PLAIN" in before[1]["mechanisms"]
    with open(starling.config) as f:
        text = f.read()
    with open(starling.config, "w") as f:
        f.write(text.replace("register.allow = true", "register.allow = false")
                .replace("[host", "allow_plain = false\nmax_stanza_bytes = 70000\n[host", 1))
    mark = starling.log_size()
    starling.signal(signal.SIGHUP)
    assert starling.wait_log(r"reloaded", since=mark), starling.log()[mark:]
    after = [_features(starling, tls) for tls in (False, True)]
    for b, a in zip(before, after):
        assert not a["register"], "registration still offered after the reload"
        assert a["max_bytes"] == "70000" and b["max_bytes"] != "70000"
    assert "PLAIN" not in after[1]["mechanisms"]
    assert "SCRAM-SHA-256" in after[1]["mechanisms"]


def test_sighup_with_a_broken_config_keeps_running(starling):
    starling.adduser("alice@localhost", PW)
    with open(starling.config, "a") as f:
        f.write("this is not a config line\n")
    mark = starling.log_size()
    starling.signal(signal.SIGHUP)
    assert starling.wait_log(r"reload", since=mark)
    assert starling.alive()
    assert run(can_login(starling, "alice@localhost", PW))


def test_starlingctl_passwd_and_deluser(starling):
    starling.adduser("alice@localhost", PW)
    starling.ctl("passwd", "alice@localhost", input="new pw\n")

    async def after_passwd():
        assert not await can_login(starling, "alice@localhost", PW)
        assert await can_login(starling, "alice@localhost", "new pw")
    run(after_passwd())
    starling.ctl("deluser", "alice@localhost")
    assert "alice@localhost" not in starling.ctl("users").stdout

    async def after_deluser():
        assert not await can_login(starling, "alice@localhost", "new pw")
    run(after_deluser())


def test_starlingctl_kick_closes_the_session(starling):
    starling.adduser("alice@localhost", PW)

    async def scenario():
        alice = await login(starling, "alice@localhost", PW, resource="kickme")
        r = await asyncio.to_thread(starling.ctl, "kick", "alice@localhost/kickme")
        assert r.returncode == 0
        await asyncio.wait_for(alice.closed.wait(), TIMEOUT)
        assert alice.stream_errors, "kicked without a stream error"
        out = await asyncio.to_thread(starling.ctl, "sessions")
        assert "alice@localhost/kickme" not in out.stdout
    run(scenario())


def test_starlingctl_status_and_check_on_a_running_daemon(starling):
    r = starling.ctl("status")
    assert "uptime" in r.stdout and "host localhost" in r.stdout, r.stdout
    r = starling.ctl("check", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
