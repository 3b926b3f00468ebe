"""test_pep.py - XEP-0163 PEP (over XEP-0060) and XEP-0115 caps, on the wire.

Each test is one conversation between raw clients that announce their
features with caps (tests/integration/peptools.py) and names the
requirement it proves: notifications only where NODE+notify was asked for,
the access models, the last item on availability and on a new
subscription, XEP-0223 preconditions, OMEMO device lists readable by
anyone, and XEP-0398 avatar hashes in presence.
"""
import pytest

from peptools import (CAPS_NS, EVENT_NS, INFO_NS, ITEMS_NS, MODULES, OWNER_NS, PUBSUB_NS, PW,
                      answer_caps_query, befriend, client, error_of, event_items, form, info_xml,
                      is_caps_query, is_event, item_ids, items, notify, publish, q,
                      send_caps_presence, ver_of_query)
from rawxmpp import CLIENT, RawClient, discard, im_login, iq, none_arrives, summary, sync, take

TUNE = "http://jabber.org/protocol/tune"
GEOLOC = "http://jabber.org/protocol/geoloc"
DEVICELIST = "eu.siacs.conversations.axolotl.devicelist"
AVATAR_DATA = "urn:xmpp:avatar:data"
AVATAR_META = "urn:xmpp:avatar:metadata"


@pytest.fixture
def server(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    for u in ("alice", "bob", "carol", "dave"):
        s.adduser(u + "@localhost", PW)
    return s


def tune(title):
    return "<tune xmlns='%s'><title>%s</title></tune>" % (TUNE, title)


def ok(el):
    assert el.get("type") == "result", summary(el)
    return el


# -- XEP-0115 ---------------------------------------------------------------

def test_xep0115_6_3_server_caps_in_stream_features_match_its_disco(server):
    c = RawClient(server.c2s_port)
    f = c.starttls()
    cap = f.find(q(CAPS_NS, "c"))
    assert cap is not None and cap.get("hash") == "sha-1", c.dump()
    node = "%s#%s" % (cap.get("node"), cap.get("ver"))
    c.close()
    a = im_login(server.c2s_port, "alice", PW)
    r = ok(iq(a, "get", "<query xmlns='%s' node='%s'/>" % (INFO_NS, node), to="localhost"))
    query = r.find(q(INFO_NS, "query"))
    assert query.get("node") == node
    assert ver_of_query(query) == cap.get("ver")
    assert CAPS_NS in [x.get("var") for x in query.findall(q(INFO_NS, "feature"))]


def test_xep0115_5_server_asks_once_then_uses_the_verified_cache(server):
    feats = notify(TUNE)
    a = im_login(server.c2s_port, "alice", PW, "one")
    send_caps_presence(a, feats)
    answer_caps_query(a, feats)                     # the server asked and verified
    sync(a)
    a2 = im_login(server.c2s_port, "alice", PW, "two")
    send_caps_presence(a2, feats)                   # same ver: from the cache
    none_arrives(a2, is_caps_query, wait=0.5, what="a second disco#info for a cached ver")
    sync(a2)
    ok(publish(a, TUNE, tune("cached")))
    take(a2, is_event(TUNE), what="a notification on the resource whose caps came from the cache")


def test_xep0115_5_4_unverifiable_caps_are_not_cached(server):
    feats = notify(TUNE)
    a = im_login(server.c2s_port, "alice", PW, "liar")
    send_caps_presence(a, feats)
    answer_caps_query(a, feats, lie=True)          # the answer does not hash to the ver
    sync(a)
    b = im_login(server.c2s_port, "bob", PW, "honest")
    send_caps_presence(b, feats)
    answer_caps_query(b, feats)                    # asked again: nothing was cached
    sync(b)


# -- XEP-0163 notifications -------------------------------------------------

def test_xep0163_4_3_notifications_only_to_resources_asking_for_notify(server):
    a = client(server, "alice", "pub", notify())
    b1 = client(server, "bob", "wants", notify(TUNE))
    b2 = client(server, "bob", "plain", notify(GEOLOC))
    b3 = client(server, "bob", "nocaps")
    befriend(a, b1)
    discard(b1), discard(b2), discard(b3)
    ok(publish(a, TUNE, tune("Open Road"), id="t1"))
    el = take(b1, is_event(TUNE, "alice@localhost"))
    assert el.get("type") == "headline" and el.get("to") == "bob@localhost/wants"
    [(iid, payload)] = event_items(el)
    assert iid == "t1" and payload.tag == q(TUNE, "tune")
    none_arrives(b2, is_event(TUNE), what="a notification for a node not asked for")
    none_arrives(b3, is_event(TUNE), what="a notification to a resource without caps")
    none_arrives(a, is_event(TUNE), what="a notification to the owner without +notify")


def test_xep0163_4_3_owner_resources_with_notify_get_their_own_events(server):
    a1 = client(server, "alice", "one", notify(TUNE))
    a2 = client(server, "alice", "two", notify(TUNE))
    ok(publish(a1, TUNE, tune("self")))
    take(a1, is_event(TUNE, "alice@localhost"))
    take(a2, is_event(TUNE, "alice@localhost"))


def test_xep0163_access_presence_default_refuses_non_contacts(server):
    a = client(server, "alice", "pub", notify())
    b = client(server, "bob", "friend", notify(TUNE))
    c = client(server, "carol", "stranger", notify(TUNE))
    befriend(a, b)
    ok(publish(a, TUNE, tune("private-ish"), id="x"))
    take(b, is_event(TUNE))
    none_arrives(c, is_event(TUNE), what="a notification to a non-contact")
    assert item_ids(ok(items(b, "alice@localhost", TUNE))) == ["x"]
    e = items(c, "alice@localhost", TUNE)
    assert e.get("type") == "error"
    assert error_of(e) == ("not-authorized", "presence-subscription-required")


def test_xep0060_access_open_lets_anyone_fetch(server):
    a = client(server, "alice", "pub", notify())
    c = client(server, "carol", "stranger", notify(GEOLOC))
    ok(publish(a, GEOLOC, "<geoloc xmlns='%s'><locality>Here</locality></geoloc>" % GEOLOC,
               id="g", options={"pubsub#access_model": "open"}))
    assert item_ids(ok(items(c, "alice@localhost", GEOLOC))) == ["g"]
    # open access does not make a stranger a subscriber (implicit = presence-based)
    none_arrives(c, is_event(GEOLOC), what="a notification to a non-contact")


def test_xep0060_access_whitelist_is_owner_only(server):
    a = client(server, "alice", "pub", notify("urn:example:secret"))
    b = client(server, "bob", "friend", notify("urn:example:secret"))
    befriend(a, b)
    discard(a), discard(b)
    ok(publish(a, "urn:example:secret", "<s xmlns='urn:example:secret'>x</s>", id="1",
               options={"pubsub#access_model": "whitelist"}))
    take(a, is_event("urn:example:secret"))
    none_arrives(b, is_event("urn:example:secret"), what="a whitelist notification to a contact")
    e = items(b, "alice@localhost", "urn:example:secret")
    assert error_of(e) == ("not-allowed", "closed-node")
    assert item_ids(ok(items(a, None, "urn:example:secret"))) == ["1"]


# -- last published item ----------------------------------------------------

def test_xep0163_6_2_last_item_on_availability(server):
    a = client(server, "alice", "pub", notify())
    b = client(server, "bob", "first", notify())
    befriend(a, b)
    ok(publish(a, TUNE, tune("one"), id="1"))
    ok(publish(a, TUNE, tune("two"), id="2"))
    late = client(server, "bob", "late", notify(TUNE))
    el = take(late, is_event(TUNE, "alice@localhost"), what="the last item on coming online")
    assert [i for i, _ in event_items(el)] == ["2"]
    # and a resource of the owner gets its own last item too
    a2 = client(server, "alice", "second", notify(TUNE))
    take(a2, is_event(TUNE, "alice@localhost"))


def test_xep0163_6_2_last_item_when_caps_arrive_after_the_query(server):
    a = client(server, "alice", "pub", notify())
    b0 = client(server, "bob", "b0", notify())
    befriend(a, b0)
    ok(publish(a, TUNE, tune("later"), id="L"))
    feats = notify(TUNE) + ["urn:example:fresh-ver"]   # a ver the server has never seen
    b = im_login(server.c2s_port, "bob", PW, "slow")
    send_caps_presence(b, feats)
    none_arrives(b, is_event(TUNE), wait=0.3, what="a notification before caps are known")
    answer_caps_query(b, feats)
    take(b, is_event(TUNE, "alice@localhost"), what="the last item once caps are known")


def test_xep0163_6_2_last_item_on_new_subscription(server):
    a = client(server, "alice", "pub", notify())
    ok(publish(a, TUNE, tune("before we met"), id="m"))
    b = client(server, "bob", "new", notify(TUNE))
    none_arrives(b, is_event(TUNE), wait=0.3, what="a notification before subscribing")
    b.send("<presence to='alice@localhost' type='subscribe'/>")
    take(a, lambda el: el.tag == CLIENT + "presence" and el.get("type") == "subscribe")
    a.send("<presence to='bob@localhost' type='subscribed'/>")
    el = take(b, is_event(TUNE, "alice@localhost"), what="the last item after approval")
    assert [i for i, _ in event_items(el)] == ["m"]


# -- XEP-0060 operations ------------------------------------------------------

def test_xep0060_items_max_items_by_id_and_retract(server):
    a = client(server, "alice", "pub", notify("urn:example:log"))
    opts = {"pubsub#max_items": "3"}
    for i in range(5):
        ok(publish(a, "urn:example:log", "<e xmlns='urn:example:log'>%d</e>" % i, id="i%d" % i,
                   options=opts))
    assert item_ids(ok(items(a, None, "urn:example:log"))) == ["i2", "i3", "i4"]
    assert item_ids(ok(items(a, None, "urn:example:log", max_items=1))) == ["i4"]
    assert item_ids(ok(items(a, None, "urn:example:log", ids=["i3"]))) == ["i3"]
    discard(a)
    ok(iq(a, "set", "<pubsub xmlns='%s'><retract node='urn:example:log' notify='true'>"
          "<item id='i3'/></retract></pubsub>" % PUBSUB_NS))
    el = take(a, is_event("urn:example:log"))
    assert event_items(el) == [("i3", None)]
    assert item_ids(ok(items(a, None, "urn:example:log"))) == ["i2", "i4"]


def test_xep0060_only_the_owner_publishes(server):
    b = client(server, "bob", "x")
    e = publish(b, TUNE, tune("not yours"), to="alice@localhost")
    assert error_of(e)[0] == "forbidden"


def test_xep0223_publish_options_precondition_not_met(server):
    a = client(server, "alice", "pub")
    ok(publish(a, "urn:example:pre", "<p xmlns='urn:example:pre'/>", id="1",
               options={"pubsub#access_model": "open"}))
    e = publish(a, "urn:example:pre", "<p xmlns='urn:example:pre'/>", id="2",
                options={"pubsub#access_model": "whitelist"})
    assert e.get("type") == "error"
    assert error_of(e) == ("conflict", "precondition-not-met")
    ok(publish(a, "urn:example:pre", "<p xmlns='urn:example:pre'/>", id="3",
               options={"pubsub#access_model": "open"}))


def test_xep0060_configure_and_delete_node(server):
    a = client(server, "alice", "pub", notify("urn:example:cfg"))
    ok(publish(a, "urn:example:cfg", "<p xmlns='urn:example:cfg'/>", id="1"))
    r = ok(iq(a, "get", "<pubsub xmlns='%s'><configure node='urn:example:cfg'/></pubsub>" % OWNER_NS))
    fields = {f.get("var"): f.findtext("{jabber:x:data}value")
              for f in r.iter("{jabber:x:data}field")}
    assert fields["pubsub#access_model"] == "presence" and fields["pubsub#max_items"] == "1"
    ok(iq(a, "set", "<pubsub xmlns='%s'><configure node='urn:example:cfg'>%s</configure></pubsub>"
          % (OWNER_NS, form(PUBSUB_NS + "#node_config", {"pubsub#access_model": "open"}))))
    c = client(server, "carol", "c")
    assert item_ids(ok(items(c, "alice@localhost", "urn:example:cfg"))) == ["1"]
    discard(a)
    ok(iq(a, "set", "<pubsub xmlns='%s'><delete node='urn:example:cfg'/></pubsub>" % OWNER_NS))
    el = take(a, is_event())
    assert el.find(q(EVENT_NS, "event")).find(q(EVENT_NS, "delete")).get("node") == "urn:example:cfg"
    assert error_of(items(a, None, "urn:example:cfg"))[0] == "item-not-found"


def test_xep0163_6_1_account_disco_shows_pep_and_lists_visible_nodes(server):
    a = client(server, "alice", "pub")
    c = client(server, "carol", "c")
    ok(publish(a, "urn:example:open", "<p xmlns='urn:example:open'/>",
               options={"pubsub#access_model": "open"}))
    ok(publish(a, "urn:example:closed", "<p xmlns='urn:example:closed'/>"))
    r = ok(iq(c, "get", "<query xmlns='%s'/>" % INFO_NS, to="alice@localhost"))
    ids = [(i.get("category"), i.get("type")) for i in r.iter(q(INFO_NS, "identity"))]
    assert ("pubsub", "pep") in ids
    feats = [f.get("var") for f in r.iter(q(INFO_NS, "feature"))]
    assert PUBSUB_NS + "#publish-options" in feats
    r = ok(iq(c, "get", "<query xmlns='%s'/>" % ITEMS_NS, to="alice@localhost"))
    assert [i.get("node") for i in r.iter(q(ITEMS_NS, "item"))] == ["urn:example:open"]
    r = ok(iq(a, "get", "<query xmlns='%s'/>" % ITEMS_NS, to="alice@localhost"))
    assert sorted(i.get("node") for i in r.iter(q(ITEMS_NS, "item"))) == [
        "urn:example:closed", "urn:example:open"]


def test_xep0060_items_persist_across_restart(starling_factory):
    s = starling_factory(host={"modules": MODULES})
    s.adduser("alice@localhost", PW)
    a = client(s, "alice", "pub")
    ok(publish(a, "urn:example:keep", "<k xmlns='urn:example:keep'>v</k>", id="k1",
               options={"pubsub#max_items": "max"}))
    ok(publish(a, "urn:example:keep", "<k xmlns='urn:example:keep'>w</k>", id="k2"))
    a.close()
    assert s.stop() == []
    s.start()
    a = client(s, "alice", "again")
    r = ok(items(a, None, "urn:example:keep"))
    assert item_ids(r) == ["k1", "k2"]
    assert r.find(".//{urn:example:keep}k").text == "v"
    r = ok(iq(a, "get", "<pubsub xmlns='%s'><configure node='urn:example:keep'/></pubsub>" % OWNER_NS))
    fields = {f.get("var"): f.findtext("{jabber:x:data}value") for f in r.iter("{jabber:x:data}field")}
    assert fields["pubsub#max_items"] == "max"


# -- OMEMO --------------------------------------------------------------------

def test_omemo_devicelist_open_access_fetched_by_a_non_contact(server):
    a = client(server, "alice", "phone", notify(DEVICELIST))
    devlist = "<list xmlns='eu.siacs.conversations.axolotl'><device id='1234'/></list>"
    ok(publish(a, DEVICELIST, devlist, id="current", options={"pubsub#access_model": "open"}))
    bundle = ("<bundle xmlns='eu.siacs.conversations.axolotl'><signedPreKeyPublic signedPreKeyId='1'>"
              "AAAA</signedPreKeyPublic><identityKey>BBBB</identityKey></bundle>")
    ok(publish(a, DEVICELIST.replace("devicelist", "bundles:1234"), bundle, id="current",
               options={"pubsub#access_model": "open"}))
    take(a, is_event(DEVICELIST))
    d = client(server, "dave", "stranger")
    r = ok(items(d, "alice@localhost", DEVICELIST))
    assert r.find(".//{eu.siacs.conversations.axolotl}device").get("id") == "1234"
    r = ok(items(d, "alice@localhost", "eu.siacs.conversations.axolotl.bundles:1234", max_items=1))
    assert r.find(".//{eu.siacs.conversations.axolotl}identityKey").text == "BBBB"


# -- XEP-0084 / XEP-0398 ------------------------------------------------------

def photo_of(pres):
    x = pres.find("{vcard-temp:x:update}x")
    return None if x is None else x.findtext("{vcard-temp:x:update}photo")


def test_xep0398_avatar_metadata_becomes_vcard_update_in_presence(starling_factory):
    s = starling_factory(host={"modules": MODULES + " avatar"})
    for u in ("alice", "bob"):
        s.adduser(u + "@localhost", PW)
    a = client(s, "alice", "pub", notify())
    b = client(s, "bob", "watch", notify(AVATAR_META))
    befriend(a, b)
    discard(a), discard(b)
    sha = "a3f5b1c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7"
    ok(publish(a, AVATAR_DATA, "<data xmlns='%s'>iVBORw0KGgo=</data>" % AVATAR_DATA, id=sha))
    ok(publish(a, AVATAR_META, "<metadata xmlns='%s'><info id='%s' bytes='8' type='image/png' "
               "width='1' height='1'/></metadata>" % (AVATAR_META, sha), id=sha))
    take(b, is_event(AVATAR_META))
    pres = take(b, lambda el: el.tag == CLIENT + "presence" and el.get("from") == "alice@localhost/pub"
                and photo_of(el) is not None, what="alice's presence with the avatar hash")
    assert photo_of(pres) == sha
    # a later presence of the client carries it as well
    a.send("<presence><status>later</status></presence>")
    pres = take(b, lambda el: el.tag == CLIENT + "presence" and el.findtext(CLIENT + "status") == "later")
    assert photo_of(pres) == sha
    # and the vCard got the PHOTO (XEP-0398 §3 conversion)
    r = ok(iq(b, "get", "<vCard xmlns='vcard-temp'/>", to="alice@localhost"))
    assert r.findtext(".//{vcard-temp}PHOTO/{vcard-temp}TYPE") == "image/png"
    assert r.findtext(".//{vcard-temp}PHOTO/{vcard-temp}BINVAL") == "iVBORw0KGgo="
