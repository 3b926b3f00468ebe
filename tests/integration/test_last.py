"""test_last.py - XEP-0012 Last Activity against the real daemon.

The server's uptime (§6), and a user's last logout (§4) for those who may
see the user's presence: bob is subscribed to alice, carol is not.
"""
import time

import pytest

from rawxmpp import CLIENT, RawClient, stanza_error

PW = "last pw"
MODULES = "disco version ping time register roster presence offline carbons last"
LAST = "jabber:iq:last"


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    for u in ("alice", "bob", "carol"):
        s.adduser(u + "@localhost", PW)
    return s


def login(server, user, resource="raw", presence=True):
    c = RawClient(server.c2s_port)
    c.login(user, PW, resource)
    if presence:
        c.send("<presence/>")
    return c


def iq(c, to, qid):
    """Send a last-activity get; return the answer."""
    to_attr = " to='%s'" % to if to else ""
    c.send("<iq type='get' id='%s'%s><query xmlns='%s'/></iq>" % (qid, to_attr, LAST))
    while True:
        el = c.expect(CLIENT + "iq", timeout=10)
        if el.get("id") == qid:
            return el


def query(el):
    return el.find("{%s}query" % LAST)


def subscribe(bob, alice):
    """bob subscribes to alice's presence and alice approves (roster 'from')."""
    bob.send("<presence to='alice@localhost' type='subscribe'/>")
    while True:
        el = alice.expect(CLIENT + "presence")
        if el.get("type") == "subscribe":
            break
    alice.send("<presence to='bob@localhost' type='subscribed'/>")
    while True:
        el = bob.expect(CLIENT + "presence")
        if el.get("type") == "subscribed":
            break


def log_out(c, status=None):
    s = "<status>%s</status>" % status if status else ""
    c.send("<presence type='unavailable'>%s</presence>" % s)
    c.send("</stream:stream>")
    c.wait_closed(5)
    c.close()


def test_xep0012_6_server_uptime(server):
    time.sleep(1.1)
    bob = login(server, "bob")
    el = iq(bob, "localhost", "up")
    assert el.get("type") == "result"
    assert 1 <= int(query(el).get("seconds")) < 600


def test_xep0012_4_offline_user_seconds_and_status_for_subscriber(server):
    alice = login(server, "alice")
    bob = login(server, "bob")
    subscribe(bob, alice)
    log_out(alice, "gone fishing")
    time.sleep(2.1)
    el = iq(bob, "alice@localhost", "l1")
    assert el.get("type") == "result", bob.dump()
    q = query(el)
    assert 2 <= int(q.get("seconds")) < 60
    assert q.text == "gone fishing"


def test_xep0012_4_session_ended_without_unavailable_counts_as_logout(server):
    alice = login(server, "alice")
    bob = login(server, "bob")
    subscribe(bob, alice)
    alice.close()  # no unavailable presence, just gone
    time.sleep(1.1)
    el = iq(bob, "alice@localhost", "l1")
    assert el.get("type") == "result", bob.dump()
    assert int(query(el).get("seconds")) >= 1
    assert not (query(el).text or "")


def test_xep0012_4_online_user_zero_seconds(server):
    alice = login(server, "alice")
    bob = login(server, "bob")
    subscribe(bob, alice)
    # a second resource going away does not make alice offline
    extra = login(server, "alice", "extra")
    time.sleep(0.2)
    log_out(extra, "bye from extra")
    time.sleep(1.1)
    el = iq(bob, "alice@localhost", "l1")
    assert el.get("type") == "result" and query(el).get("seconds") == "0"


def test_xep0012_4_not_subscribed_forbidden(server):
    alice = login(server, "alice")
    log_out(alice, "private")
    carol = login(server, "carol")
    el = iq(carol, "alice@localhost", "l1")
    assert stanza_error(el) == ("auth", "forbidden")


def test_xep0012_own_account_without_to(server):
    alice = login(server, "alice")
    el = iq(alice, None, "me")
    assert el.get("type") == "result" and query(el).get("seconds") == "0"


def test_xep0012_unknown_user_service_unavailable(server):
    bob = login(server, "bob")
    el = iq(bob, "nobody@localhost", "l1")
    assert stanza_error(el) == ("cancel", "service-unavailable")


def test_xep0012_last_logout_survives_restart(server):
    alice = login(server, "alice")
    bob = login(server, "bob")
    subscribe(bob, alice)
    log_out(alice, "see you")
    bob.close()
    time.sleep(0.3)
    assert server.stop() == []
    server.start()
    bob = login(server, "bob")
    el = iq(bob, "alice@localhost", "l1")
    assert el.get("type") == "result" and query(el).text == "see you", bob.dump()
