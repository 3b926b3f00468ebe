"""test_bookmarks.py - XEP-0402 PEP bookmarks kept in sync with XEP-0048
bookmarks in XEP-0049 private XML storage (XEP-0402 §5.3 "#compat"),
both ways, on the wire with raw clients.
"""
import pytest

from peptools import (INFO_NS, MODULES, PUBSUB_NS, PW, client, is_event, item_ids, items, notify,
                      publish, q)
from rawxmpp import iq, summary, sync, take

BM2 = "urn:xmpp:bookmarks:1"
BM1 = "storage:bookmarks"
PRIVATE = "jabber:iq:private"
BM2_OPTIONS = {"pubsub#persist_items": "true", "pubsub#max_items": "max",
               "pubsub#access_model": "whitelist"}


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES + " bookmarks"})
    s.adduser("alice@localhost", PW)
    return s


def ok(el):
    assert el.get("type") == "result", summary(el)
    return el


def private_bookmarks(c):
    r = ok(iq(c, "get", "<query xmlns='%s'><storage xmlns='%s'/></query>" % (PRIVATE, BM1)))
    st = r.find(q(PRIVATE, "query")).find(q(BM1, "storage"))
    return {x.get("jid"): x for x in st.findall(q(BM1, "conference"))}


def test_xep0402_5_3_compat_feature_on_the_account(server):
    a = client(server, "alice", "one")
    r = ok(iq(a, "get", "<query xmlns='%s'/>" % INFO_NS, to="alice@localhost"))
    feats = [f.get("var") for f in r.iter(q(INFO_NS, "feature"))]
    assert BM2 + "#compat" in feats


def test_xep0402_5_3_pep_bookmark_appears_in_xep0048_private_storage(server):
    a = client(server, "alice", "new", notify(BM2))
    ok(publish(a, BM2, "<conference xmlns='%s' name='Coven' autojoin='true'><nick>Alice</nick>"
               "</conference>" % BM2, id="coven@chat.example", options=BM2_OPTIONS))
    take(a, is_event(BM2))
    sync(a)
    bms = private_bookmarks(a)
    assert list(bms) == ["coven@chat.example"]
    c = bms["coven@chat.example"]
    assert c.get("name") == "Coven" and c.get("autojoin") == "true"
    assert c.findtext(q(BM1, "nick")) == "Alice"
    # retracting on PEP removes it from private storage too
    ok(iq(a, "set", "<pubsub xmlns='%s'><retract node='%s' notify='true'><item id='coven@chat.example'/>"
          "</retract></pubsub>" % (PUBSUB_NS, BM2)))
    sync(a)
    assert private_bookmarks(a) == {}


def test_xep0402_5_3_xep0048_private_storage_set_becomes_pep_items(server):
    new = client(server, "alice", "new", notify(BM2))
    old = client(server, "alice", "old")
    ok(iq(old, "set", "<query xmlns='%s'><storage xmlns='%s'>"
          "<conference jid='a@chat.example' name='A' autojoin='true'><nick>al</nick></conference>"
          "<conference jid='b@chat.example' name='B'/></storage></query>" % (PRIVATE, BM1)))
    ev = take(new, is_event(BM2), what="a XEP-0402 notification for the old client's bookmark")
    assert ev.get("from") == "alice@localhost"
    r = ok(items(new, None, BM2))
    assert sorted(item_ids(r)) == ["a@chat.example", "b@chat.example"]
    conf = [c for c in r.iter(q(BM2, "conference"))]
    byname = {c.get("name"): c for c in conf}
    assert byname["A"].get("autojoin") == "true" and byname["A"].findtext(q(BM2, "nick")) == "al"
    assert byname["B"].get("autojoin") == "false"
    # the node was created private and unbounded (XEP-0402 §5.1)
    bob_view = items(new, None, BM2)
    assert bob_view.get("type") == "result"
    # removing one in the old client retracts it on PEP
    ok(iq(old, "set", "<query xmlns='%s'><storage xmlns='%s'>"
          "<conference jid='b@chat.example' name='B'/></storage></query>" % (PRIVATE, BM1)))
    sync(old)
    assert item_ids(ok(items(new, None, BM2))) == ["b@chat.example"]
    # and the private storage still holds what the old client wrote
    assert list(private_bookmarks(old)) == ["b@chat.example"]
