"""test_profanity.py - a real terminal client, Profanity, against starlingd.

Profanity runs in a detached tmux session (its own HOME and XDG dirs in a temp
directory, so it never touches a real config); the test types into it with
send-keys and reads the screen with capture-pane, like a user would:

    alice types:    /connect alice@localhost server 127.0.0.1 port N tls force
    alice types:    (her password at "Enter password:")
    alice types:    /tls allow        (the self-signed certificate)
    alice types:    /msg bob@localhost hello from profanity
    bob receives:   hello from profanity     (slixmpp)
    bob sends:      hello back
    alice sees:     hello back

The tmux session is killed by its unique name at the end, whatever happens.
"""
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest

from slixclient import login, run

PW = "profanity pw"

pytestmark = pytest.mark.skipif(not (shutil.which("tmux") and shutil.which("profanity")),
                                reason="tmux and profanity are needed (apt install tmux profanity)")


class Tmux:
    def __init__(self, command, env):
        self.name = "starling-it-%s" % uuid.uuid4().hex[:10]
        envs = " ".join("%s=%s" % (k, v) for k, v in env.items())
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50",
                        "env %s %s" % (envs, command)], check=True, timeout=10)

    def screen(self):
        r = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-t", self.name],
                           capture_output=True, text=True, timeout=10)
        return r.stdout

    def type(self, text, enter=True):
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", text], check=True, timeout=10)
        if enter:
            subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True, timeout=10)

    def wait(self, pattern, timeout=15):
        """Wait until the screen matches pattern; returns the screen."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.screen()
            if rx.search(s):
                return s
            time.sleep(0.1)
        raise AssertionError("screen never matched %r:\n%s" % (pattern, self.screen()))

    def kill(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, timeout=10)


@pytest.fixture
def profanity():
    home = tempfile.mkdtemp(prefix="st-it-prof-", dir="/tmp")
    env = {"HOME": home, "XDG_CONFIG_HOME": home + "/.config", "XDG_DATA_HOME": home + "/.local/share",
           "XDG_CACHE_HOME": home + "/.cache", "TERM": "xterm-256color", "LANG": "C.UTF-8"}
    t = Tmux("profanity -l DEBUG", env)
    t.home = home
    yield t
    t.kill()
    shutil.rmtree(home, ignore_errors=True)


def test_profanity_sends_and_receives_over_starttls(starling, profanity):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    t = profanity

    async def in_thread(fn, *a, **kw):
        return await asyncio.to_thread(fn, *a, **kw)

    async def scenario():
        bob = await login(starling, "bob@localhost", PW)
        await in_thread(t.wait, r"Profanity|\[\d\d:\d\d\]")
        t.type("/connect alice@localhost server 127.0.0.1 port %d tls force" % starling.c2s_port)
        await in_thread(t.wait, r"Enter password:")
        t.type(PW)
        try:
            screen = await in_thread(t.wait, r"/tls allow|logged in successfully|Login failed", 20)
            if "/tls allow" in screen and "logged in successfully" not in screen:
                t.type("/tls allow")  # the self-signed certificate
            screen = await in_thread(t.wait, r"logged in successfully|Login failed", 20)
            assert "Login failed" not in screen, screen
        except AssertionError as e:
            log = _profanity_log(t.home)
            raise AssertionError("%s\n--- profanity log ---\n%s" % (e, log[-6000:])) from None
        t.type("/msg bob@localhost hello from profanity")
        m = await bob.next_message(type="chat", timeout=15)
        assert m["body"] == "hello from profanity"
        assert m["from"].bare == "alice@localhost"
        bob.send_message(mto=m["from"], mbody="hello back from slixmpp", mtype="chat")
        await in_thread(t.wait, r"hello back from slixmpp")
        await bob.close()
        t.type("/quit")
    run(scenario(), timeout=90)


def _profanity_log(home):
    for root, _, files in os.walk(home):
        for f in files:
            if f.endswith(".log"):
                with open(os.path.join(root, f), errors="replace") as fh:
                    return fh.read()
    return "(no profanity log)"
