"""test_im_interop.py - rosters, subscriptions and presence between real
clients: Profanity (in tmux), libstrophe (strophe_roster.c) and slixmpp.

Profanity:
    alice types:    /roster add bob@localhost  and  /sub request bob@localhost
    bob (slixmpp):  sees the request, approves it, asks back
    alice types:    /sub allow bob@localhost
    both:           see each other online, then chat

libstrophe:
    alice (slixmpp) subscribes to carol (strophe_roster), which approves and asks back
    alice approves; each sees the other's presence; they chat (ping -> pong, bye)

slixmpp answers subscription requests by itself unless told not to:
auto_authorize = None (False would deny them) and auto_subscribe = False.
"""
import asyncio
import os
import shutil

import pytest

from conftest import BUILD, SLOW
from slixclient import login, run
from test_profanity import Tmux, _profanity_log  # noqa: F401 (Tmux used by the fixture)

PW = "interop pw"
IM = {"modules": "disco version ping time register roster presence"}
T = 15 * SLOW


@pytest.fixture
def im(starling_factory):
    s = starling_factory(host=IM)
    for user in ("alice", "bob", "carol"):
        s.adduser(user, PW)
    return s


async def manual_client(server, jid):
    """A slixmpp client that answers no subscription by itself and queues
    every presence it receives; it has fetched its roster (interested)."""
    c = await login(server, jid, PW, presence=False)
    c.roster.auto_authorize = None
    c.roster.auto_subscribe = False
    c.presences = asyncio.Queue()
    c.add_event_handler("presence", lambda p: c.presences.put_nowait(p))
    await c.get_roster(timeout=T)
    c.send_presence()
    await c.sync()
    return c


async def next_presence(c, bare, type, timeout=T):
    """The next presence from bare JID 'bare' of this type ('available' for none)."""
    async def wait():
        while True:
            p = await c.presences.get()
            if p["from"].bare == bare and p["type"] == type:
                return p
    return await asyncio.wait_for(wait(), timeout)


def roster_state(c, jid):
    item = c.client_roster[jid]
    return item["subscription"], item["pending_out"]


# -- Profanity ------------------------------------------------------------------

@pytest.fixture
def profanity():
    if not (shutil.which("tmux") and shutil.which("profanity")):
        pytest.skip("tmux and profanity are needed (apt install tmux profanity)")
    import tempfile
    home = tempfile.mkdtemp(prefix="st-it-prof-", dir="/tmp")
    env = {"HOME": home, "XDG_CONFIG_HOME": home + "/.config", "XDG_DATA_HOME": home + "/.local/share",
           "XDG_CACHE_HOME": home + "/.cache", "TERM": "xterm-256color", "LANG": "C.UTF-8"}
    t = Tmux("profanity -l DEBUG", env)
    t.home = home
    yield t
    t.kill()
    shutil.rmtree(home, ignore_errors=True)


def test_rfc6121_interop_profanity_subscribes_to_slixmpp_presence_and_chat(im, profanity):
    t = profanity

    async def screen(pattern, timeout=T):
        try:
            return await asyncio.to_thread(t.wait, pattern, timeout)
        except AssertionError as e:
            raise AssertionError("%s\n--- profanity log ---\n%s"
                                 % (e, _profanity_log(t.home)[-6000:])) from None

    async def scenario():
        bob = await manual_client(im, "bob@localhost")
        requests = asyncio.Queue()
        bob.add_event_handler("presence_subscribe", lambda p: requests.put_nowait(p))
        await screen(r"Profanity|\[\d\d:\d\d\]")
        t.type("/connect alice@localhost server 127.0.0.1 port %d tls force" % im.c2s_port)
        await screen(r"Enter password:")
        t.type(PW)
        s = await screen(r"/tls allow|logged in successfully|Login failed", 20)
        if "/tls allow" in s and "logged in successfully" not in s:
            t.type("/tls allow")  # the self-signed certificate
        s = await screen(r"logged in successfully|Login failed", 20)
        assert "Login failed" not in s, s
        # alice adds bob and asks for his presence
        t.type("/roster add bob@localhost")
        t.type("/sub request bob@localhost")
        req = await asyncio.wait_for(requests.get(), T)
        assert req["from"] == "alice@localhost"  # the bare JID (RFC 6121 §3.1.2)
        # bob approves and asks back
        bob.send_presence(pto="alice@localhost", ptype="subscribed")
        bob.send_presence(pto="alice@localhost", ptype="subscribe")
        await screen(r"(?i)received authori[sz]ation request from bob@localhost|/sub allow")
        t.type("/sub allow bob@localhost")
        # bob now sees alice online ...
        await next_presence(bob, "alice@localhost", "available")
        await bob.sync()
        assert roster_state(bob, "alice@localhost")[0] == "both"
        # ... and alice's roster says the subscription goes both ways
        t.type("/sub show bob@localhost")
        await screen(r"(?i)subscription.*both|both.*subscription")
        # they chat
        t.type("/msg bob@localhost hello from profanity")
        m = await bob.next_message(type="chat", timeout=T)
        assert m["body"] == "hello from profanity" and m["from"].bare == "alice@localhost"
        bob.send_message(mto=m["from"], mbody="hello back from slixmpp", mtype="chat")
        await screen(r"hello back from slixmpp")
        # alice quits: bob is told she is gone (RFC 6121 §4.5)
        t.type("/quit")
        await next_presence(bob, "alice@localhost", "unavailable")
        await bob.close()
    run(scenario(), timeout=120)


# -- libstrophe -----------------------------------------------------------------

@pytest.fixture(scope="session")
def strophe_roster():
    path = os.path.join(BUILD, "tests", "strophe_roster")
    if not os.access(path, os.X_OK):
        pytest.skip("%s is missing: run make %s/tests/strophe_roster" % (path, os.path.basename(BUILD)))
    return path


async def lines_until(proc, needle, seen, timeout=T):
    """Read the subprocess's stdout lines until one starts with needle."""
    async def read():
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError("EOF before %r; output so far:\n%s" % (needle, "".join(seen)))
            seen.append(line.decode("utf-8", "replace"))
            if seen[-1].startswith(needle):
                return seen[-1].strip()
    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError("no %r within %ss; output so far:\n%s"
                             % (needle, timeout, "".join(seen))) from None


def test_rfc6121_interop_libstrophe_accepts_slixmpp_subscription_presence_and_chat(im, strophe_roster):
    async def scenario():
        alice = await manual_client(im, "alice@localhost")
        requests = asyncio.Queue()
        alice.add_event_handler("presence_subscribe", lambda p: requests.put_nowait(p))
        carol = await asyncio.create_subprocess_exec(
            strophe_roster, "-t", str(int(4 * T)), "carol@localhost", PW, "127.0.0.1",
            str(im.c2s_port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out = []
        try:
            await lines_until(carol, "online carol@localhost/", out)
            # alice asks carol; libstrophe approves and asks back
            alice.send_presence(pto="carol@localhost", ptype="subscribe")
            assert await lines_until(carol, "request ", out) == "request alice@localhost"
            await next_presence(alice, "carol@localhost", "subscribed")
            await next_presence(alice, "carol@localhost", "available")  # §3.1.5
            req = await asyncio.wait_for(requests.get(), T)
            assert req["from"] == "carol@localhost"
            # carol's roster pushes show the subscription forming
            await lines_until(carol, "push alice@localhost from", out)
            alice.send_presence(pto="carol@localhost", ptype="subscribed")
            await lines_until(carol, "push alice@localhost both", out)
            line = await lines_until(carol, "presence alice@localhost/", out)
            assert line.endswith(" available"), line
            await alice.sync()
            assert roster_state(alice, "carol@localhost") == ("both", False)
            # presence updates flow to libstrophe
            alice.send_presence(pshow="away")
            assert (await lines_until(carol, "presence alice@localhost/", out)).endswith(" available")
            # they chat
            alice.send_message(mto="carol@localhost", mbody="ping", mtype="chat")
            m = await alice.next_message(type="chat", timeout=T)
            assert m["body"] == "pong" and m["from"].bare == "carol@localhost"
            alice.send_message(mto="carol@localhost", mbody="bye", mtype="chat")
            assert await asyncio.wait_for(carol.wait(), T) == 0
            # carol's stream closed: alice is told (RFC 6121 §4.5.2)
            await next_presence(alice, "carol@localhost", "unavailable")
        finally:
            if carol.returncode is None:
                carol.kill()
                await carol.wait()
        await alice.close()
    run(scenario(), timeout=90)
