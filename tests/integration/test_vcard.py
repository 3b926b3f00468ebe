"""test_vcard.py - XEP-0054 vcard-temp against the real daemon.

alice keeps her vCard on the server; bob reads it at her bare JID. Each
test reads like the exchange of XEP-0054 it checks (§3.1 retrieving one's
own vCard, §3.2 updating it, §3.3 viewing another user's); one test drives
slixmpp's xep_0054 plugin.
"""
import pytest

from rawxmpp import CLIENT, RawClient, stanza_error
from slixclient import login as slix_login, run

PW = "vcard pw"
MODULES = "disco version ping time register roster presence vcard"
VC = "vcard-temp"


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    for u in ("alice", "bob"):
        s.adduser(u + "@localhost", PW)
    return s


def login(server, user, resource="r"):
    c = RawClient(server.c2s_port)
    c.login(user, PW, resource)
    return c


def iq(c, xml, id):
    c.send(xml)
    while True:
        el = c.expect(CLIENT + "iq")
        if el.get("id") == id:
            return el


def get(c, to=None, id="g"):
    attr = " to='%s'" % to if to else ""
    return iq(c, "<iq type='get' id='%s'%s><vCard xmlns='%s'/></iq>" % (id, attr, VC), id)


def set_(c, inner, to=None, id="s"):
    attr = " to='%s'" % to if to else ""
    return iq(c, "<iq type='set' id='%s'%s><vCard xmlns='%s'>%s</vCard></iq>"
              % (id, attr, VC, inner), id)


def test_xep0054_disco_lists_vcard_temp(server):
    c = login(server, "alice")
    el = iq(c, "<iq type='get' id='d' to='localhost'>"
               "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>", "d")
    feats = [f.get("var") for f in el.iter("{http://jabber.org/protocol/disco#info}feature")]
    assert VC in feats
    c.close()


def test_xep0054_3_1_own_vcard_empty_when_none_stored(server):
    c = login(server, "alice")
    el = get(c)
    assert el.get("type") == "result"
    v = el.find("{%s}vCard" % VC)
    assert v is not None and len(v) == 0
    c.close()


def test_xep0054_3_2_set_then_get_own_with_and_without_to(server):
    c = login(server, "alice")
    assert set_(c, "<FN>Alice Liddell</FN><NICKNAME>al</NICKNAME>").get("type") == "result"
    for to in (None, "alice@localhost"):
        v = get(c, to=to, id="g%s" % bool(to)).find("{%s}vCard" % VC)
        assert v.findtext("{%s}FN" % VC) == "Alice Liddell"
        assert v.findtext("{%s}NICKNAME" % VC) == "al"
    # a set replaces the whole vCard (§3.2: no partial updates)
    assert set_(c, "<FN>Alice</FN>", id="s2").get("type") == "result"
    v = get(c, id="g2").find("{%s}vCard" % VC)
    assert v.findtext("{%s}FN" % VC) == "Alice" and v.find("{%s}NICKNAME" % VC) is None
    c.close()


def test_xep0054_3_3_another_users_vcard_at_bare_jid(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    set_(alice, "<FN>Alice</FN><DESC>&lt;escaped &amp; kept&gt;</DESC>")
    alice.close()
    el = get(bob, to="alice@localhost")
    assert el.get("type") == "result" and el.get("from") == "alice@localhost"
    v = el.find("{%s}vCard" % VC)
    assert v.findtext("{%s}FN" % VC) == "Alice"
    assert v.findtext("{%s}DESC" % VC) == "<escaped & kept>"
    bob.close()


def test_xep0054_3_3_missing_vcard_and_unknown_user_same_error(server):
    bob = login(server, "bob")
    # alice exists but has no vCard; nobody does not exist: one answer for both
    for to, id in (("alice@localhost", "a"), ("nobody@localhost", "n")):
        el = get(bob, to=to, id=id)
        assert stanza_error(el) == ("cancel", "item-not-found"), to
    bob.close()


def test_xep0054_3_2_setting_another_users_vcard_forbidden(server):
    bob = login(server, "bob")
    el = set_(bob, "<FN>Not Alice</FN>", to="alice@localhost")
    assert stanza_error(el) == ("auth", "forbidden")
    alice = login(server, "alice")
    assert len(get(alice).find("{%s}vCard" % VC)) == 0
    alice.close(), bob.close()


def test_xep0054_vcard_size_limit_not_acceptable(starling_factory):
    s = starling_factory(host={"modules": MODULES, "vcard.max_bytes": "1k"})
    s.adduser("alice@localhost", PW)
    c = login(s, "alice")
    el = set_(c, "<DESC>%s</DESC>" % ("x" * 2000))
    assert stanza_error(el) == ("modify", "not-acceptable")
    assert "1024" in (el.find(CLIENT + "error").findtext(
        "{urn:ietf:params:xml:ns:xmpp-stanzas}text") or "")
    assert set_(c, "<DESC>%s</DESC>" % ("x" * 500), id="ok").get("type") == "result"
    c.close()


def test_xep0054_vcard_survives_relogin(server):
    c = login(server, "alice", "one")
    set_(c, "<FN>Persistent</FN>")
    c.close()
    c = login(server, "alice", "two")
    assert get(c).find("{%s}vCard" % VC).findtext("{%s}FN" % VC) == "Persistent"
    c.close()


def test_xep0054_slixmpp_plugin_publishes_and_reads(server):
    async def scenario():
        alice = await slix_login(server, "alice@localhost", PW, resource="slix")
        bob = await slix_login(server, "bob@localhost", PW, resource="slix")
        for c in (alice, bob):
            c.register_plugin("xep_0054")
        vc = alice.plugin["xep_0054"].make_vcard()
        vc["FN"] = "Alice via slixmpp"
        vc["NICKNAME"] = "slixy"
        await alice.plugin["xep_0054"].publish_vcard(vc)
        got = await bob.plugin["xep_0054"].get_vcard("alice@localhost", cached=False)
        assert got["vcard_temp"]["FN"] == "Alice via slixmpp"
        assert "slixy" in got["vcard_temp"]["NICKNAME"]
        await alice.close()
        await bob.close()
    run(scenario())
