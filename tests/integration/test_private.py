"""test_private.py - XEP-0049 Private XML Storage against the real daemon.

alice stores elements for herself and reads them back; bob may not touch
them. Each test reads like an exchange of XEP-0049 §2.3 (the XEP has one
section of rules); one test drives slixmpp's xep_0049 plugin.
"""
import pytest

from rawxmpp import CLIENT, RawClient, stanza_error
from slixclient import login as slix_login, run

PW = "private pw"
MODULES = "disco version ping time register roster presence private"
PRIV = "jabber:iq:private"


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


def iq(c, type, inner, id, to=None):
    attr = " to='%s'" % to if to else ""
    c.send("<iq type='%s' id='%s'%s><query xmlns='%s'>%s</query></iq>" % (type, id, attr, PRIV, inner))
    while True:
        el = c.expect(CLIENT + "iq")
        if el.get("id") == id:
            return el


def test_xep0049_store_then_retrieve(server):
    c = login(server, "alice")
    el = iq(c, "set", "<exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus>", "s")
    assert el.get("type") == "result"
    el = iq(c, "get", "<exodus xmlns='exodus:prefs'/>", "g")
    assert el.get("type") == "result"
    got = el.find("{%s}query/{exodus:prefs}exodus" % PRIV)
    assert got.findtext("{exodus:prefs}defaultnick") == "Hamlet"
    c.close()


def test_xep0049_nothing_stored_returns_the_empty_element(server):
    c = login(server, "alice")
    el = iq(c, "get", "<storage xmlns='storage:bookmarks'/>", "g")
    assert el.get("type") == "result"
    got = el.find("{%s}query/{storage:bookmarks}storage" % PRIV)
    assert got is not None and len(got) == 0
    c.close()


def test_xep0049_entries_keyed_by_name_and_namespace(server):
    c = login(server, "alice")
    # one set with two elements; same name in another namespace is another entry
    iq(c, "set", "<prefs xmlns='urn:a'><x>a</x></prefs><prefs xmlns='urn:b'><x>b</x></prefs>", "s")
    for ns in ("urn:a", "urn:b"):
        el = iq(c, "get", "<prefs xmlns='%s'/>" % ns, "g" + ns)
        assert el.find("{%s}query/{%s}prefs" % (PRIV, ns)).findtext("{%s}x" % ns) == ns[-1]
    el = iq(c, "get", "<other xmlns='urn:a'/>", "go")
    assert len(el.find("{%s}query/{urn:a}other" % PRIV)) == 0
    c.close()


def test_xep0049_reserved_namespaces_not_acceptable(server):
    c = login(server, "alice")
    for i, inner in enumerate(("<message xmlns='jabber:client'/>", "<query/>",
                               "<presence xmlns='jabber:server'/>")):
        for t in ("set", "get"):
            el = iq(c, t, inner, "r%d%s" % (i, t))
            assert stanza_error(el) == ("modify", "not-acceptable"), (inner, t)
    c.close()


def test_xep0049_query_without_element_not_acceptable(server):
    c = login(server, "alice")
    for t in ("set", "get"):
        assert stanza_error(iq(c, t, "", "e" + t)) == ("modify", "not-acceptable")
    c.close()


def test_xep0049_another_users_storage_forbidden(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    iq(alice, "set", "<secret xmlns='urn:s'>mine</secret>", "s")
    for t, inner in (("get", "<secret xmlns='urn:s'/>"), ("set", "<secret xmlns='urn:s'>his</secret>")):
        el = iq(bob, t, inner, "o" + t, to="alice@localhost")
        assert stanza_error(el) == ("auth", "forbidden"), t
    el = iq(alice, "get", "<secret xmlns='urn:s'/>", "g")
    assert el.find("{%s}query/{urn:s}secret" % PRIV).text == "mine"
    alice.close(), bob.close()


def test_xep0049_private_size_limit_not_acceptable(starling_factory):
    s = starling_factory(host={"modules": MODULES, "private.max_bytes": "2k"})
    s.adduser("alice@localhost", PW)
    c = login(s, "alice")
    assert iq(c, "set", "<a xmlns='urn:x'>%s</a>" % ("x" * 1200), "a").get("type") == "result"
    # the limit is for all of the user's entries together
    el = iq(c, "set", "<b xmlns='urn:x'>%s</b>" % ("y" * 1200), "b")
    assert stanza_error(el) == ("modify", "not-acceptable")
    # replacing an entry counts its new size, not both
    assert iq(c, "set", "<a xmlns='urn:x'>%s</a>" % ("z" * 1500), "a2").get("type") == "result"
    el = iq(c, "set", "<big xmlns='urn:x'>%s</big>" % ("w" * 3000), "big")
    assert stanza_error(el) == ("modify", "not-acceptable")
    c.close()


def test_xep0049_slixmpp_plugin_stores_and_retrieves(server):
    from slixmpp.xmlstream import ET, ElementBase, register_stanza_plugin
    from slixmpp.plugins.xep_0049 import PrivateXML

    class Prefs(ElementBase):
        name = "prefs"
        namespace = "urn:example:prefs"
        plugin_attrib = "prefs"
        interfaces = {"colour"}
        sub_interfaces = interfaces

    register_stanza_plugin(PrivateXML, Prefs)

    async def scenario():
        alice = await slix_login(server, "alice@localhost", PW, resource="slix")
        alice.register_plugin("xep_0049")
        p = Prefs()
        p["colour"] = "teal"
        await alice.plugin["xep_0049"].store(p)
        got = await alice.plugin["xep_0049"].retrieve("prefs")
        assert got["private"]["prefs"]["colour"] == "teal"
        await alice.close()
    run(scenario())
