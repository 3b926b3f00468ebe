"""test_blocking.py - XEP-0191 Blocking Command against the real daemon.

alice blocks and unblocks; bob (and sometimes carol) try to reach her and
she tries to reach them. Each test reads like the exchange of XEP-0191 it
checks (section numbers of version 1.3: §3.2 blocklist, §3.3 block and what
a block does to stanzas both ways, §3.4 unblock, §3.5 unblock all, §6 JID
matching). Raw clients keep every stanza visible; one test drives slixmpp's
xep_0191 plugin to show a real client library gets along.
"""
import socket
import time

import pytest

from rawxmpp import CLIENT, Closed, RawClient, stanza_error
from slixclient import login as slix_login, run

PW = "blocking pw"
MODULES = "disco version ping time register roster presence blocking"
BLOCK = "urn:xmpp:blocking"
BLOCKED = "{urn:xmpp:blocking:errors}blocked"


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    for u in ("alice", "bob", "carol"):
        s.adduser(u + "@localhost", PW)
    return s


def login(server, user, resource="r", presence=True):
    c = RawClient(server.c2s_port)
    c.login(user, PW, resource)
    if presence:
        c.send("<presence/>")
    return c


def iq(c, xml, id):
    """Send an iq and return the answer with that id (pushes are skipped)."""
    c.send(xml)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        el = c.expect(CLIENT + "iq")
        if el.get("id") == id:
            return el
    raise AssertionError("no answer to %s\n%s" % (id, c.dump()))


def blocklist(c):
    el = iq(c, "<iq type='get' id='bl'><blocklist xmlns='%s'/></iq>" % BLOCK, "bl")
    assert el.get("type") == "result", c.dump()
    return sorted(i.get("jid") for i in el.find("{%s}blocklist" % BLOCK))


def block(c, *jids, id="b"):
    items = "".join("<item jid='%s'/>" % j for j in jids)
    return iq(c, "<iq type='set' id='%s'><block xmlns='%s'>%s</block></iq>" % (id, BLOCK, items), id)


def unblock(c, *jids, id="u"):
    items = "".join("<item jid='%s'/>" % j for j in jids)
    return iq(c, "<iq type='set' id='%s'><unblock xmlns='%s'>%s</unblock></iq>" % (id, BLOCK, items), id)


def elements(c, quiet=0.5):
    out = []
    while True:
        try:
            out.append(c.next_element(quiet))
        except (socket.timeout, TimeoutError, Closed):
            return out


def settle(*clients):
    time.sleep(0.3)
    for c in clients:
        elements(c, quiet=0.2)


def of(els, tag):
    return [e for e in els if e.tag == CLIENT + tag]


def next_presence(c, type=None, frm=None):
    """The next presence of that type (None: available) and sender."""
    while True:
        el = c.expect(CLIENT + "presence")
        if el.get("type") == type and (frm is None or el.get("from") == frm):
            return el


def subscribe_both(a, a_jid, b, b_jid):
    """a and b subscribe to each other (RFC 6121 §3.1), both online."""
    for x, y, yj, xj in ((a, b, b_jid, a_jid), (b, a, a_jid, b_jid)):
        x.send("<presence type='subscribe' to='%s'/>" % yj)
        el = next_presence(y, type="subscribe")
        assert el.get("from") == xj, y.dump()
        y.send("<presence type='subscribed' to='%s'/>" % xj)
    settle(a, b)


def test_xep0191_3_1_disco_lists_blocking_feature(server):
    c = login(server, "alice")
    el = iq(c, "<iq type='get' id='d' to='localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d")
    feats = [f.get("var") for f in el.iter("{http://jabber.org/protocol/disco#info}feature")]
    assert BLOCK in feats
    c.close()


def test_xep0191_3_2_blocklist_empty_then_lists_blocked_items(server):
    c = login(server, "alice")
    assert blocklist(c) == []
    assert block(c, "bob@localhost", "Example.ORG").get("type") == "result"
    # items come back normalised (RFC 7622 / stringprep)
    assert blocklist(c) == ["bob@localhost", "example.org"]
    c.close()


def test_xep0191_3_3_block_pushed_to_resources_that_requested_the_list(server):
    a1, a2 = login(server, "alice", "one"), login(server, "alice", "two")
    blocklist(a1)  # only 'one' asks for the list
    settle(a1, a2)
    assert block(a1, "bob@localhost").get("type") == "result"
    pushes = [e for e in elements(a1) if e.find("{%s}block" % BLOCK) is not None]
    assert len(pushes) == 1 and pushes[0].get("type") == "set"
    assert pushes[0].get("to") == "alice@localhost/one"
    assert [i.get("jid") for i in pushes[0].find("{%s}block" % BLOCK)] == ["bob@localhost"]
    assert not [e for e in elements(a2) if e.find("{%s}block" % BLOCK) is not None]
    # the unblock push follows the same rule
    blocklist(a2)
    assert unblock(a1, "bob@localhost").get("type") == "result"
    for c, res in ((a1, "one"), (a2, "two")):
        got = [e for e in elements(c) if e.find("{%s}unblock" % BLOCK) is not None]
        assert len(got) == 1 and got[0].get("to") == "alice@localhost/" + res
    a1.close(), a2.close()


def test_xep0191_3_3_block_without_items_bad_request_and_bad_jid_malformed(server):
    c = login(server, "alice")
    el = iq(c, "<iq type='set' id='e'><block xmlns='%s'/></iq>" % BLOCK, "e")
    assert stanza_error(el) == ("modify", "bad-request")
    el = block(c, "@bad@", id="m")
    assert stanza_error(el) == ("modify", "jid-malformed")
    assert blocklist(c) == []
    c.close()


def test_xep0191_3_3_inbound_from_blocked_refused_as_if_offline(server):
    alice, bob = login(server, "alice", "a"), login(server, "bob", "b")
    assert block(alice, "bob@localhost").get("type") == "result"
    settle(alice, bob)
    # message: service-unavailable, never delivered
    bob.send("<message to='alice@localhost' id='m1' type='chat'><body>hi</body></message>")
    el = bob.expect(CLIENT + "message")
    assert el.get("type") == "error" and el.get("id") == "m1"
    assert stanza_error(el) == ("cancel", "service-unavailable")
    # iq get to her full JID: service-unavailable
    bob.send("<iq to='alice@localhost/a' type='get' id='q1'><query xmlns='jabber:iq:version'/></iq>")
    el = bob.expect(CLIENT + "iq")
    assert el.get("id") == "q1" and stanza_error(el) == ("cancel", "service-unavailable")
    # presence: no answer at all
    bob.send("<presence to='alice@localhost/a'/>")
    bob.send("<presence type='subscribe' to='alice@localhost'/>")
    assert not of(elements(bob), "presence")
    got = elements(alice)
    assert not of(got, "message") and not of(got, "presence"), alice.dump()
    assert not [e for e in of(got, "iq") if e.get("id") == "q1"]
    alice.close(), bob.close()


def test_xep0191_3_3_outbound_to_blocked_not_acceptable_with_blocked_condition(server):
    alice, bob = login(server, "alice", "a"), login(server, "bob", "b")
    assert block(alice, "bob@localhost").get("type") == "result"
    settle(alice, bob)
    alice.send("<message to='bob@localhost' id='m2' type='chat'><body>can you hear me</body></message>")
    el = alice.expect(CLIENT + "message")
    assert el.get("type") == "error" and el.get("from") == "bob@localhost"
    assert stanza_error(el) == ("cancel", "not-acceptable")
    assert el.find(CLIENT + "error").find(BLOCKED) is not None
    alice.send("<iq to='bob@localhost/b' type='get' id='q2'><query xmlns='jabber:iq:version'/></iq>")
    el = alice.expect(CLIENT + "iq")
    assert el.get("id") == "q2" and stanza_error(el) == ("cancel", "not-acceptable")
    assert not of(elements(bob), "message")
    alice.close(), bob.close()


def test_xep0191_3_3_blocked_contact_gets_unavailable(server):
    alice, bob = login(server, "alice", "a"), login(server, "bob", "b")
    subscribe_both(alice, "alice@localhost", bob, "bob@localhost")
    alice.send("<presence><status>here</status></presence>")
    el = next_presence(bob, frm="alice@localhost/a")
    assert el.findtext(CLIENT + "status") == "here"
    assert block(alice, "bob@localhost").get("type") == "result"
    el = bob.expect(CLIENT + "presence")
    assert el.get("from") == "alice@localhost/a" and el.get("type") == "unavailable"
    # and her later presence does not reach him
    alice.send("<presence><status>still here</status></presence>")
    assert not [p for p in of(elements(bob), "presence") if p.get("from", "").startswith("alice")]
    alice.close(), bob.close()


def test_xep0191_3_4_unblock_resends_current_presence_to_subscriber(server):
    alice, bob = login(server, "alice", "a"), login(server, "bob", "b")
    subscribe_both(alice, "alice@localhost", bob, "bob@localhost")
    assert block(alice, "bob@localhost").get("type") == "result"
    alice.send("<presence><status>while blocked</status></presence>")
    settle(alice, bob)
    assert unblock(alice, "bob@localhost").get("type") == "result"
    el = bob.expect(CLIENT + "presence")
    assert el.get("from") == "alice@localhost/a" and el.get("type") is None
    assert el.findtext(CLIENT + "status") == "while blocked"
    # and messages flow again both ways
    bob.send("<message to='alice@localhost/a' type='chat'><body>back</body></message>")
    assert alice.expect(CLIENT + "message").findtext(CLIENT + "body") == "back"
    alice.close(), bob.close()


def test_xep0191_3_5_unblock_all(server):
    alice, bob = login(server, "alice", "a"), login(server, "bob", "b")
    blocklist(alice)
    block(alice, "bob@localhost", "carol@localhost", "example.org")
    settle(alice)
    el = iq(alice, "<iq type='set' id='ua'><unblock xmlns='%s'/></iq>" % BLOCK, "ua")
    assert el.get("type") == "result"
    pushes = [e for e in elements(alice) if e.find("{%s}unblock" % BLOCK) is not None]
    assert len(pushes) == 1 and len(pushes[0].find("{%s}unblock" % BLOCK)) == 0
    assert blocklist(alice) == []
    bob.send("<message to='alice@localhost/a' type='chat'><body>free</body></message>")
    assert alice.expect(CLIENT + "message").findtext(CLIENT + "body") == "free"
    alice.close(), bob.close()


def test_xep0191_6_jid_matching_full_bare_domain_and_domain_resource(server):
    alice = login(server, "alice", "a")
    bob_phone, bob_desk = login(server, "bob", "phone"), login(server, "bob", "desk")
    block(alice, "bob@localhost/phone", "elsewhere.example", "other.example/bot")
    settle(alice, bob_phone, bob_desk)
    # a full-JID item blocks that resource only
    bob_phone.send("<message to='alice@localhost/a' id='p'><body>from phone</body></message>")
    assert stanza_error(bob_phone.expect(CLIENT + "message")) == ("cancel", "service-unavailable")
    bob_desk.send("<message to='alice@localhost/a' id='d'><body>from desk</body></message>")
    assert alice.expect(CLIENT + "message").findtext(CLIENT + "body") == "from desk"

    def outbound(to):
        alice.send("<message to='%s' id='o'><body>x</body></message>" % to)
        return stanza_error(alice.expect(CLIENT + "message"))
    # a domain item covers the domain, its users, its resources and subdomains
    for to in ("elsewhere.example", "someone@elsewhere.example", "someone@elsewhere.example/r",
               "elsewhere.example/r", "muc.elsewhere.example"):
        assert outbound(to) == ("cancel", "not-acceptable"), to
    # a domain/resource item only that resource of the domain
    assert outbound("other.example/bot") == ("cancel", "not-acceptable")
    for to in ("other.example/human", "someone@other.example/bot", "notelsewhere.example"):
        assert outbound(to) == ("cancel", "remote-server-not-found"), to
    alice.close(), bob_phone.close(), bob_desk.close()


def test_xep0191_3_3_block_persists_across_sessions_and_applies_while_offline(server):
    alice = login(server, "alice", "a")
    block(alice, "bob@localhost")
    alice.close()
    time.sleep(0.3)
    bob = login(server, "bob", "b")
    # alice is offline: a subscription request from a blocked contact is
    # dropped, not stored for her next login
    bob.send("<presence type='subscribe' to='alice@localhost'/>")
    bob.send("<message to='alice@localhost' id='off'><body>hello?</body></message>")
    assert stanza_error(bob.expect(CLIENT + "message")) == ("cancel", "service-unavailable")
    settle(bob)
    alice = login(server, "alice", "a2")
    got = elements(alice, quiet=1.0)
    assert not [p for p in of(got, "presence") if p.get("type") == "subscribe"], alice.dump()
    assert blocklist(alice) == ["bob@localhost"]
    alice.close(), bob.close()


def test_xep0191_stanzas_sent_right_after_bind_are_checked(server):
    alice = login(server, "alice", "a")
    block(alice, "bob@localhost")
    alice.close()
    time.sleep(0.3)
    # the list loads after bind; a stanza sent at once must still meet it
    for n in range(3):
        alice = RawClient(server.c2s_port)
        alice.login("alice", PW, "fast%d" % n)
        alice.send("<message to='bob@localhost' id='fast'><body>x</body></message>")
        el = alice.expect(CLIENT + "message")
        assert stanza_error(el) == ("cancel", "not-acceptable"), alice.dump()
        alice.close()


def test_xep0191_max_items_policy_violation(starling_factory):
    s = starling_factory(host={"modules": MODULES, "blocking.max_items": "2"})
    s.adduser("alice@localhost", PW)
    c = login(s, "alice")
    assert block(c, "a@example.org", "b@example.org").get("type") == "result"
    el = block(c, "c@example.org", id="b3")
    assert stanza_error(el) == ("modify", "policy-violation")
    # blocking one already there is fine
    assert block(c, "a@example.org", id="b4").get("type") == "result"
    assert blocklist(c) == ["a@example.org", "b@example.org"]
    c.close()


def test_xep0191_own_account_and_server_never_blocked(server):
    alice = login(server, "alice", "a")
    block(alice, "localhost", "alice@localhost")
    el = iq(alice, "<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>", "p")
    assert el.get("type") == "result"
    # other users of the blocked domain are blocked
    alice.send("<message to='bob@localhost' id='o'><body>x</body></message>")
    assert stanza_error(alice.expect(CLIENT + "message")) == ("cancel", "not-acceptable")
    alice.close()


def test_xep0191_slixmpp_plugin_blocks_and_lists(server):
    async def scenario():
        alice = await slix_login(server, "alice@localhost", PW, resource="slix")
        alice.register_plugin("xep_0191")
        await alice.plugin["xep_0191"].block(["bob@localhost", "carol@localhost"])
        got = await alice.plugin["xep_0191"].get_blocked()
        assert sorted(str(j) for j in got["blocklist"]["items"]) == ["bob@localhost",
                                                                     "carol@localhost"]
        await alice.plugin["xep_0191"].unblock(["carol@localhost"])
        got = await alice.plugin["xep_0191"].get_blocked()
        assert [str(j) for j in got["blocklist"]["items"]] == ["bob@localhost"]
        await alice.close()
    run(scenario())
