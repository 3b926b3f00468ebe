"""test_libstrophe.py - libstrophe and slixmpp talk to each other through starlingd.

strophe_client.c (built by the Makefile as $STARLING_BUILD/tests/strophe_client)
is a second, independent XMPP stack. Messages go both ways, over STARTTLS and
direct TLS, and libstrophe's own choice of SASL mechanism (the strongest it
knows: SCRAM-SHA-256 here) must succeed.
"""
import asyncio
import os
import re
import shutil
import subprocess

import pytest

from conftest import BUILD, ROOT
from slixclient import login, run

PW = "strophe pw"
BODY = "hello from libstrophe \u00e9"


@pytest.fixture(scope="session")
def strophe_client(tmp_path_factory):
    path = os.path.join(BUILD, "tests", "strophe_client")
    if os.access(path, os.X_OK):
        return path
    # Not built yet (make builds it with the rest): build a private copy.
    if not shutil.which("pkg-config") or subprocess.run(
            ["pkg-config", "--exists", "libstrophe"]).returncode != 0:
        pytest.skip("libstrophe-dev is not installed")
    out = str(tmp_path_factory.mktemp("strophe") / "strophe_client")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libstrophe"],
                           capture_output=True, text=True, check=True).stdout.split()
    r = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-o", out,
                        os.path.join(ROOT, "tests", "integration", "strophe_client.c")] + flags,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


async def strophe(binary, server, *args, direct_tls=False, timeout=15):
    port = server.tls_port if direct_tls else server.c2s_port
    argv = [binary, "-v", "-t", str(timeout)] + (["-d"] if direct_tls else [])
    argv += [args[0], PW, "127.0.0.1", str(port)] + list(args[1:])
    return await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)


async def wait_line(stream, needle, timeout=15):
    """Read lines from stream until one contains needle; returns all read."""
    seen = []

    async def read():
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError("EOF before %r:\n%s" % (needle, "".join(seen)))
            seen.append(line.decode("utf-8", "replace"))
            if needle in seen[-1]:
                return "".join(seen)
    return await asyncio.wait_for(read(), timeout)


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "directtls"])
def test_libstrophe_sends_to_slixmpp(starling, strophe_client, direct_tls):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)

    async def scenario():
        bob = await login(starling, "bob@localhost", PW)
        p = await strophe(strophe_client, starling, "alice@localhost", "bob@localhost", BODY,
                          "send", direct_tls=direct_tls)
        out, err = await asyncio.wait_for(p.communicate(), 20)
        err = err.decode("utf-8", "replace")
        assert p.returncode == 0, err[-5000:]
        # libstrophe picks the strongest SCRAM both sides have.
        assert "SCRAM-SHA-256" in err, err[-5000:]
        m = await bob.next_message(type="chat")
        assert m["body"] == BODY
        assert m["from"].bare == "alice@localhost"
        await bob.close()
    run(scenario())


@pytest.mark.parametrize("direct_tls", [False, True], ids=["starttls", "directtls"])
def test_slixmpp_sends_to_libstrophe(starling, strophe_client, direct_tls):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)

    async def scenario():
        p = await strophe(strophe_client, starling, "alice@localhost", "-", "-", "receive-one",
                          direct_tls=direct_tls)
        try:
            err = await wait_line(p.stderr, "strophe_client: waiting")
            full_jid = re.search(r"online as (\S+)", err).group(1)
            assert full_jid.startswith("alice@localhost/"), err
            bob = await login(starling, "bob@localhost", PW)
            # Address the full JID: delivery to it does not depend on the
            # receiver's presence having been processed yet.
            bob.send_message(mto=full_jid, mbody=BODY, mtype="chat")
            out = await asyncio.wait_for(p.stdout.readline(), 15)
            assert out.decode("utf-8").rstrip("\n") == BODY
            await asyncio.wait_for(p.wait(), 15)
            assert p.returncode == 0
            await bob.close()
        finally:
            if p.returncode is None:
                p.kill()
                await p.wait()
    run(scenario())



@pytest.mark.parametrize("mech", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_rfc6120_6_libstrophe_logs_in_with_each_scram(starling_factory, strophe_client, mech):
    """libstrophe cannot be told which mechanism to use, so the server offers
    only one (sasl_mechanisms) and the client must log in with it."""
    starling = starling_factory(sasl_mechanisms=mech)
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)

    async def scenario():
        bob = await login(starling, "bob@localhost", PW, mech=mech)
        p = await strophe(strophe_client, starling, "alice@localhost", "bob@localhost", BODY,
                          "send")
        out, err = await asyncio.wait_for(p.communicate(), 20)
        err = err.decode("utf-8", "replace")
        assert p.returncode == 0, err[-5000:]
        m = await bob.next_message(type="chat")
        assert m["body"] == BODY
        await bob.close()
        assert "authenticated as alice@localhost (%s)" % mech in starling.log()
    run(scenario())
