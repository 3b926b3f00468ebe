"""test_carbons.py - XEP-0280 Message Carbons against the real daemon.

alice is online on several resources; some enable carbons. bob talks to
her. Each test reads like the exchange of XEP-0280 §4-§7 it checks.
"""
import socket
import time

import pytest

from rawxmpp import CLIENT, Closed, RawClient

PW = "carbons pw"
MODULES = "disco version ping time register roster presence offline carbons last"
CARBONS = "urn:xmpp:carbons:2"
FORWARD = "{urn:xmpp:forward:0}forwarded"


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    for u in ("alice", "bob"):
        s.adduser(u + "@localhost", PW)
    return s


def login(server, user, resource, carbons=False, priority=0):
    c = RawClient(server.c2s_port)
    c.login(user, PW, resource)
    if carbons:
        c.send("<iq type='set' id='on'><enable xmlns='%s'/></iq>" % CARBONS)
        el = c.expect(CLIENT + "iq")
        assert el.get("id") == "on" and el.get("type") == "result"
    c.send("<presence><priority>%d</priority></presence>" % priority)
    return c


def messages(c, quiet=0.5):
    out = []
    while True:
        try:
            el = c.next_element(quiet)
        except (socket.timeout, TimeoutError, Closed):
            return out
        if el.tag == CLIENT + "message":
            out.append(el)


def settle(*clients):
    """Let presences and broadcasts finish, then forget what arrived."""
    time.sleep(0.3)
    for c in clients:
        messages(c, quiet=0.2)


def carbon(m, kind):
    """The forwarded message inside a <sent/> or <received/> carbon, or None."""
    wrapper = m.find("{%s}%s" % (CARBONS, kind))
    if wrapper is None:
        return None
    fwd = wrapper.find(FORWARD)
    return fwd.find(CLIENT + "message") if fwd is not None else None


def test_xep0280_sent_and_received_copies_on_all_resources(server):
    desk = login(server, "alice", "desk", carbons=True)
    phone = login(server, "alice", "phone", carbons=True)
    laptop = login(server, "alice", "laptop")  # carbons not enabled
    bob = login(server, "bob", "home")
    settle(desk, phone, laptop, bob)

    # bob -> alice/desk: phone receives a <received/> copy, laptop nothing
    bob.send("<message to='alice@localhost/desk' type='chat' id='r1'><body>to desk</body></message>")
    assert [m.get("id") for m in messages(desk)] == ["r1"]
    got = messages(phone)
    assert len(got) == 1
    assert got[0].get("from") == "alice@localhost"
    assert got[0].get("to") == "alice@localhost/phone"
    inner = carbon(got[0], "received")
    assert inner is not None and inner.get("id") == "r1"
    assert inner.get("from") == "bob@localhost/home" and inner.get("to") == "alice@localhost/desk"
    assert inner.findtext(CLIENT + "body") == "to desk"
    assert messages(laptop) == []

    # alice/desk -> bob: phone receives a <sent/> copy
    desk.send("<message to='bob@localhost/home' type='chat' id='s1'><body>from desk</body></message>")
    assert [m.get("id") for m in messages(bob)] == ["s1"]
    got = messages(phone)
    assert len(got) == 1 and got[0].get("from") == "alice@localhost"
    assert got[0].get("to") == "alice@localhost/phone"
    inner = carbon(got[0], "sent")
    assert inner is not None and inner.get("id") == "s1"
    assert inner.get("from") == "alice@localhost/desk" and inner.get("to") == "bob@localhost/home"
    assert messages(desk) == [], "the sender gets no copy of its own message"
    assert messages(laptop) == []


def test_xep0280_bare_jid_copies_go_to_resources_outside_the_delivery_set(server):
    desk = login(server, "alice", "desk", carbons=True, priority=5)
    phone = login(server, "alice", "phone", carbons=True, priority=1)
    bob = login(server, "bob", "home")
    settle(desk, phone, bob)
    bob.send("<message to='alice@localhost' type='chat' id='b1'><body>bare</body></message>")
    got_desk = messages(desk)
    assert [m.get("id") for m in got_desk] == ["b1"] and carbon(got_desk[0], "received") is None
    got = messages(phone)
    assert len(got) == 1 and carbon(got[0], "received").get("id") == "b1"

    # equal priorities: both get the message itself, nobody a copy
    phone.send("<presence><priority>5</priority></presence>")
    settle(desk, phone)
    bob.send("<message to='alice@localhost' type='chat' id='b2'><body>both</body></message>")
    for c in (desk, phone):
        got = messages(c)
        assert [m.get("id") for m in got] == ["b2"] and carbon(got[0], "received") is None


def test_xep0334_no_copy_and_private_hints(server):
    desk = login(server, "alice", "desk", carbons=True)
    phone = login(server, "alice", "phone", carbons=True)
    bob = login(server, "bob", "home", carbons=True)
    bob2 = login(server, "bob", "tablet", carbons=True)
    settle(desk, phone, bob, bob2)
    private = "<private xmlns='urn:xmpp:carbons:2'/>"
    nocopy = "<no-copy xmlns='urn:xmpp:hints'/>"
    for i, hint in enumerate((private, nocopy)):
        desk.send("<message to='bob@localhost/home' type='chat' id='p%d'><body>x</body>%s</message>"
                  % (i, hint))
    # then one without hints, so we know the others were processed first
    desk.send("<message to='bob@localhost/home' type='chat' id='plain'><body>y</body></message>")
    assert [m.get("id") for m in messages(bob)] == ["p0", "p1", "plain"]
    # XEP-0280 §7: no sent copy on alice's side, no received copy on bob's
    for other in (phone, bob2):
        got = messages(other)
        assert len(got) == 1, [m.get("id") for m in got]
        inner = carbon(got[0], "sent") or carbon(got[0], "received")
        assert inner.get("id") == "plain"


def test_xep0280_6_groupchat_headline_and_error_not_copied(server):
    desk = login(server, "alice", "desk", carbons=True)
    phone = login(server, "alice", "phone", carbons=True)
    bob = login(server, "bob", "home")
    settle(desk, phone, bob)
    bob.send("<message to='alice@localhost/desk' type='headline' id='h'><body>news</body></message>")
    bob.send("<message to='alice@localhost/desk' type='groupchat' id='g'><body>room</body></message>")
    bob.send("<message to='alice@localhost/desk' type='error' id='e'><error type='cancel'>"
             "<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>")
    bob.send("<message to='alice@localhost/desk' id='n'><thread>t</thread></message>")
    bob.send("<message to='alice@localhost/desk' id='cs'>"
             "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert [m.get("id") for m in messages(desk)] == ["h", "g", "e", "n", "cs"]
    got = messages(phone)
    # only the chat state (an IM payload, §6) is copied
    assert [carbon(m, "received").get("id") for m in got] == ["cs"]


def test_xep0280_disable_stops_copies(server):
    desk = login(server, "alice", "desk", carbons=True)
    phone = login(server, "alice", "phone", carbons=True)
    bob = login(server, "bob", "home")
    settle(desk, phone, bob)
    phone.send("<iq type='set' id='off'><disable xmlns='%s'/></iq>" % CARBONS)
    el = phone.expect(CLIENT + "iq")
    assert el.get("id") == "off" and el.get("type") == "result"
    bob.send("<message to='alice@localhost/desk' type='chat' id='m'><body>hi</body></message>")
    desk.send("<message to='bob@localhost' type='chat' id='s'><body>hey</body></message>")
    assert [m.get("id") for m in messages(desk)] == ["m"]
    assert messages(phone) == []


def test_xep0280_enable_addressed_to_own_bare_jid(server):
    desk = login(server, "alice", "desk")
    desk.send("<iq type='set' id='on' to='alice@localhost'><enable xmlns='%s'/></iq>" % CARBONS)
    el = desk.expect(CLIENT + "iq")
    assert el.get("id") == "on" and el.get("type") == "result"
