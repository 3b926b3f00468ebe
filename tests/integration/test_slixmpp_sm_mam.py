"""test_slixmpp_sm_mam.py - slixmpp's own XEP-0198 and XEP-0313 code against us.

The raw-client tests (test_sm.py, test_mam.py) check the wire format; these
check that a real client library's stream management resumes and its MAM
queries page, as a user's client would.
"""
import asyncio

from slixclient import Client, login, run

PW = "slix pw"


async def sm_client(server, jid):
    c = Client(jid, PW)
    c.register_plugin("xep_0198")
    enabled = asyncio.get_running_loop().create_future()
    c.add_event_handler("sm_enabled", lambda e: enabled.done() or enabled.set_result(True))
    c.connect(("127.0.0.1", server.c2s_port), force_starttls=True)
    await asyncio.wait_for(enabled, 10)
    c.send_presence()
    await c.sync()
    return c


def test_xep0198_slixmpp_resumes_and_gets_each_message_once(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)

    async def scenario():
        alice = await sm_client(starling, "alice@localhost/phone")
        bob = await login(starling, "bob@localhost", PW)
        bob.send_message(mto="alice@localhost/phone", mbody="m1", mtype="chat")
        assert (await alice.next_message(type="chat"))["body"] == "m1"
        # the radio goes away: no </stream:stream>, no TLS close
        resumed = asyncio.get_running_loop().create_future()
        alice.add_event_handler("session_resumed",
                                lambda e: resumed.done() or resumed.set_result(True))
        alice.transport.abort()
        await asyncio.wait_for(alice.closed.wait(), 5)
        alice.closed.clear()
        for body in ("m2", "m3"):
            bob.send_message(mto="alice@localhost/phone", mbody=body, mtype="chat")
        await bob.sync()
        alice.connect(("127.0.0.1", starling.c2s_port), force_starttls=True)
        await asyncio.wait_for(resumed, 10)
        got = [(await alice.next_message(type="chat"))["body"] for _ in range(2)]
        assert got == ["m2", "m3"]
        try:
            extra = await alice.next_message(type="chat", timeout=1)
            raise AssertionError("delivered twice: %s" % extra["body"])
        except asyncio.TimeoutError:
            pass
        await alice.close()
        await bob.close()
    run(scenario())


def test_xep0313_slixmpp_queries_the_archive(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)

    async def scenario():
        alice = await login(starling, "alice@localhost", PW)
        alice.register_plugin("xep_0313")
        bob = await login(starling, "bob@localhost", PW)
        for i in range(5):
            bob.send_message(mto="alice@localhost", mbody="b%d" % i, mtype="chat")
            alice.send_message(mto="bob@localhost", mbody="a%d" % i, mtype="chat")
        await bob.sync()
        await alice.sync()
        bodies = []
        async for page in alice["xep_0313"].retrieve(with_jid="bob@localhost", iterator=True,
                                                     rsm={"max": 4}):
            for msg in page["mam"]["results"]:
                bodies.append(msg["mam_result"]["forwarded"]["stanza"]["body"])
        assert sorted(bodies) == sorted(["a%d" % i for i in range(5)] + ["b%d" % i for i in range(5)])
        await alice.close()
        await bob.close()
    run(scenario())
