"""test_offline.py - XEP-0160 offline messages (with XEP-0203 delay and
XEP-0359 stanza ids) against the real daemon, with raw clients.

Each test reads like the conversation it checks: bob writes while alice is
away, alice comes online and receives. Names give the requirement proved.
"""
import re
import signal
import socket
import time

import pytest

from rawxmpp import CLIENT, Closed, RawClient, stanza_error

PW = "offline pw"
MODULES = "disco version ping time register roster presence offline carbons last"
DELAY = "{urn:xmpp:delay}delay"
SID = "{urn:xmpp:sid:0}stanza-id"
STANZA_ERR = "{urn:ietf:params:xml:ns:xmpp-stanzas}"


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    for u in ("alice", "bob"):
        s.adduser(u + "@localhost", PW)
    return s


def login(server, user, resource="raw"):
    c = RawClient(server.c2s_port)
    c.login(user, PW, resource)
    return c


def sync(c, seen=None):
    """Ping the server; everything the server sent before the answer is
    appended to seen (so nothing is lost while waiting)."""
    pid = "sync%d" % time.monotonic_ns()
    c.send("<iq type='get' id='%s' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>" % pid)
    while True:
        el = c.next_element()
        if el.tag == CLIENT + "iq" and el.get("id") == pid:
            return seen
        if seen is not None:
            seen.append(el)


def messages(c, quiet=0.5):
    """Every message that arrives until the stream is quiet for `quiet` s."""
    out = []
    while True:
        try:
            el = c.next_element(quiet)
        except (socket.timeout, TimeoutError, Closed):
            return out
        if el.tag == CLIENT + "message":
            out.append(el)


def bodies(msgs):
    return [m.findtext(CLIENT + "body") for m in msgs]


def send_chat(c, to, body, mid, extra=""):
    c.send("<message to='%s' type='chat' id='%s'><body>%s</body>%s</message>" % (to, mid, body, extra))


def wait_stored(server, n, since=0):
    """Until the daemon logged n stored messages (after log offset since)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(re.findall(r"stored a message for alice@localhost", server.log()[since:])) >= n:
            return
        time.sleep(0.05)
    pytest.fail("messages were not stored in time\n" + server.log()[-4000:])


def test_xep0160_offline_message_stored_with_delay_and_stanza_id(server):
    bob = login(server, "bob")
    send_chat(bob, "alice@localhost", "while you were out", "m1")
    seen = sync(bob, [])
    wait_stored(server, 1)
    assert not [e for e in seen if e.tag == CLIENT + "message"], "bob got an error for a stored message"

    alice = login(server, "alice", "desk")
    alice.send("<presence/>")
    got = messages(alice)
    assert bodies(got) == ["while you were out"]
    m = got[0]
    assert m.get("from") == "bob@localhost/raw" and m.get("id") == "m1"
    delay = m.find(DELAY)
    assert delay is not None and delay.get("from") == "localhost"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", delay.get("stamp"))
    sid = m.findall(SID)
    assert len(sid) == 1 and sid[0].get("by") == "alice@localhost" and sid[0].get("id")


def test_xep0160_offline_messages_delivered_in_order(server):
    bob = login(server, "bob")
    for i in range(5):
        send_chat(bob, "alice@localhost", "n%d" % i, "m%d" % i)
    sync(bob)
    wait_stored(server, 5)
    alice = login(server, "alice")
    alice.send("<presence/>")
    assert bodies(messages(alice)) == ["n%d" % i for i in range(5)]


def test_xep0160_offline_message_delivered_once_after_reconnect(server):
    bob = login(server, "bob")
    send_chat(bob, "alice@localhost", "only once", "m1")
    sync(bob)
    wait_stored(server, 1)
    alice = login(server, "alice", "first")
    alice.send("<presence/>")
    assert bodies(messages(alice)) == ["only once"]
    alice.send("</stream:stream>")
    alice.wait_closed(5)
    alice.close()
    time.sleep(0.3)
    again = login(server, "alice", "second")
    again.send("<presence/>")
    assert bodies(messages(again, quiet=1.0)) == []


def test_xep0160_two_resources_at_once_only_one_gets_them(server):
    bob = login(server, "bob")
    for i in range(3):
        send_chat(bob, "alice@localhost", "x%d" % i, "m%d" % i)
    sync(bob)
    wait_stored(server, 3)
    a = login(server, "alice", "one")
    b = login(server, "alice", "two")
    # both initial presences in the same moment
    a.send("<presence/>")
    b.send("<presence/>")
    got_a, got_b = bodies(messages(a)), bodies(messages(b))
    assert sorted([got_a, got_b]) == [[], ["x0", "x1", "x2"]], (got_a, got_b)


def test_xep0160_negative_priority_gets_no_offline_messages(server):
    bob = login(server, "bob")
    send_chat(bob, "alice@localhost", "for a positive resource", "m1")
    sync(bob)
    wait_stored(server, 1)
    neg = login(server, "alice", "neg")
    neg.send("<presence><priority>-1</priority></presence>")
    assert bodies(messages(neg)) == []
    pos = login(server, "alice", "pos")
    pos.send("<presence><priority>1</priority></presence>")
    assert bodies(messages(pos)) == ["for a positive resource"]


def test_xep0160_offline_survives_restart(server):
    bob = login(server, "bob")
    send_chat(bob, "alice@localhost", "kept across a restart", "m1")
    sync(bob)
    wait_stored(server, 1)
    bob.close()
    assert server.stop() == []
    server.start()
    alice = login(server, "alice")
    alice.send("<presence/>")
    assert bodies(messages(alice)) == ["kept across a restart"]


def test_xep0160_offline_survives_kill_9_restart(server):
    bob = login(server, "bob")
    send_chat(bob, "alice@localhost", "kept across a crash", "m1")
    sync(bob)
    wait_stored(server, 1)
    # the daemon dies without a chance to checkpoint: the WAL has the message
    server.signal(signal.SIGKILL)
    assert server.wait_exit() == -signal.SIGKILL
    bob.close()
    server.start()
    alice = login(server, "alice")
    alice.send("<presence/>")
    assert bodies(messages(alice)) == ["kept across a crash"]
    alice.close()
    again = login(server, "alice", "again")
    again.send("<presence/>")
    assert bodies(messages(again, quiet=1.0)) == []


def test_xep0160_quota_exceeded_sender_gets_service_unavailable(starling_factory):
    s = starling_factory(host={"modules": MODULES, "offline.max_messages": "2"})
    for u in ("alice", "bob"):
        s.adduser(u + "@localhost", PW)
    bob = login(s, "bob")
    for i in range(3):
        send_chat(bob, "alice@localhost", "q%d" % i, "q%d" % i)
    errors = [m for m in messages(bob, quiet=1.0) if m.get("type") == "error"]
    assert [m.get("id") for m in errors] == ["q2"], "only the third message is refused"
    assert stanza_error(errors[0]) == ("cancel", "service-unavailable")
    text = errors[0].findtext(CLIENT + "error/" + STANZA_ERR + "text")
    assert text and "full" in text
    alice = login(s, "alice")
    alice.send("<presence/>")
    assert bodies(messages(alice)) == ["q0", "q1"]


def test_xep0160_message_to_unknown_account_service_unavailable(server):
    bob = login(server, "bob")
    send_chat(bob, "nobody@localhost", "hello?", "u1")
    el = bob.expect(CLIENT + "message")
    assert el.get("id") == "u1" and stanza_error(el) == ("cancel", "service-unavailable")


def test_xep0160_chat_states_headline_and_no_store_hints_not_stored(server):
    bob = login(server, "bob")
    # a bare chat state, a headline, and bodies with XEP-0334 hints
    bob.send("<message to='alice@localhost' type='chat' id='cs'>"
             "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    bob.send("<message to='alice@localhost' type='headline' id='hl'><body>news</body></message>")
    send_chat(bob, "alice@localhost", "secret", "ns", "<no-store xmlns='urn:xmpp:hints'/>")
    send_chat(bob, "alice@localhost", "brief", "np", "<no-permanent-store xmlns='urn:xmpp:hints'/>")
    # and one that is stored: a chat state with a body
    send_chat(bob, "alice@localhost", "kept", "ok",
              "<active xmlns='http://jabber.org/protocol/chatstates'/>")
    errors = [m for m in messages(bob, quiet=1.0) if m.get("type") == "error"]
    # RFC 6121 8.5.2.1.1: what is not stored is bounced (headlines are dropped)
    assert sorted(m.get("id") for m in errors) == ["cs", "np", "ns"]
    assert all(stanza_error(m) == ("cancel", "service-unavailable") for m in errors)
    wait_stored(server, 1)
    alice = login(server, "alice")
    alice.send("<presence/>")
    assert bodies(messages(alice)) == ["kept"]


def test_xep0359_forged_stanza_id_stripped_and_own_added_on_live_delivery(server):
    alice = login(server, "alice")
    alice.send("<presence/>")
    sync(alice)
    bob = login(server, "bob")
    send_chat(bob, "alice@localhost", "hi", "f1",
              "<stanza-id xmlns='urn:xmpp:sid:0' by='alice@localhost' id='forged'/>"
              "<stanza-id xmlns='urn:xmpp:sid:0' by='room@muc.example' id='theirs'/>")
    m = alice.expect(CLIENT + "message")
    ids = {(e.get("by"), e.get("id")) for e in m.findall(SID)}
    assert ("alice@localhost", "forged") not in ids
    assert ("room@muc.example", "theirs") in ids, "ids by other entities are left alone"
    ours = [i for b, i in ids if b == "alice@localhost"]
    assert len(ours) == 1 and ours[0] != "forged"
    # ids are unique per message
    send_chat(bob, "alice@localhost/raw", "again", "f2")
    m2 = alice.expect(CLIENT + "message")
    ours2 = [e.get("id") for e in m2.findall(SID) if e.get("by") == "alice@localhost"]
    assert len(ours2) == 1 and ours2[0] != ours[0]


def test_xep0160_xep0359_disco_features_advertised(server):
    alice = login(server, "alice")
    alice.send("<iq type='get' id='d' to='localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    el = alice.expect(CLIENT + "iq")
    feats = {f.get("var") for f in el.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert {"msgoffline", "urn:xmpp:sid:0", "urn:xmpp:carbons:2", "jabber:iq:last"} <= feats
