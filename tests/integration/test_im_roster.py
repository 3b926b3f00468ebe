"""test_im_roster.py - roster management (RFC 6121 §2) and roster versioning
(RFC 6121 §2.6, XEP-0237) against mod_roster, with raw clients.

Each test is one conversation; the comments say who sends what:

    alice sends:     <iq type='set'><query xmlns='jabber:iq:roster'><item jid='bob@localhost'/>
    alice receives:  <iq type='result'/>
    alice receives:  <iq type='set'><query ver='1'><item jid='bob@localhost' subscription='none'/>

The daemon's config is in the test: the default test host does not load the
IM modules, so every test asks for them (IM below).
"""
import pytest

from rawxmpp import (ROSTER, ROSTER_NS, RawClient, im_login, iq, is_push, none_arrives,
                     roster_get, roster_item_dict, roster_of, roster_set, stanza_error, summary,
                     sync, take, take_push)
from conftest import SLOW

PW = "roster pw"
IM = {"modules": "disco version ping time register roster presence"}
QUIET = 0.5 * SLOW  # how long "nothing arrives" is watched


@pytest.fixture
def im(starling_factory):
    s = starling_factory(host=IM)
    for user in ("alice", "bob", "carol", "dave"):
        s.adduser(user, PW)
    return s


def alice(server, resource="desk"):
    return im_login(server.c2s_port, "alice", PW, resource)


def items_of(el):
    q = el.find(ROSTER + "query")
    return [roster_item_dict(i) for i in q.findall(ROSTER + "item")]


# -- §2.1.3 / §2.2 roster get ------------------------------------------------

def test_rfc6121_2_1_3_roster_get_of_empty_roster_is_empty_query_with_ver(im):
    a = alice(im)
    # alice sends: <iq type='get'><query xmlns='jabber:iq:roster'/></iq>
    el = roster_get(a)
    assert el.get("type") == "result", summary(el)
    q = el.find(ROSTER + "query")
    assert q is not None, "a roster result carries <query/> (RFC 6121 §2.1.4)"
    assert items_of(el) == []
    # versioning is offered, so the result says which version this is (§2.6.3)
    assert q.get("ver") is not None, summary(el)
    a.close()


def test_rfc6121_2_3_roster_set_adds_item_with_name_and_groups(im):
    a = alice(im)
    roster_get(a)  # alice is now an interested resource (§2.1.6)
    # alice sends: <item jid='bob@localhost' name='Bob'><group>Friends</group><group>Work</group>
    el = roster_set(a, "bob@localhost", name="Bob", groups=["Friends", "Work"])
    assert el.get("type") == "result", summary(el)
    # alice receives the push: subscription none, no ask (§2.3.2)
    item, ver = take_push(a, "bob@localhost")
    assert item == {"jid": "bob@localhost", "name": "Bob", "subscription": "none", "ask": None,
                    "approved": None, "groups": ["Friends", "Work"]}
    assert ver, "a push carries the new roster version (§2.6.3)"
    assert roster_of(a) == {"bob@localhost": item}
    a.close()


def test_rfc6121_2_1_5_roster_set_ignores_subscription_and_ask_from_client(im):
    a = alice(im)
    # alice claims subscription='both' ask='subscribe': the server keeps its own state
    el = iq(a, "set", "<query xmlns='%s'><item jid='bob@localhost' subscription='both' "
            "ask='subscribe'/></query>" % ROSTER_NS)
    assert el.get("type") == "result", summary(el)
    item = roster_of(a)["bob@localhost"]
    assert item["subscription"] == "none" and item["ask"] is None, item
    a.close()


def test_rfc6121_2_4_roster_update_replaces_name_and_groups(im):
    a = alice(im)
    roster_get(a)
    roster_set(a, "bob@localhost", name="Bob", groups=["Friends", "Work"])
    take_push(a, "bob@localhost")
    # alice sends an update: a new name, one group fewer, one new (§2.4.1: atomic)
    el = roster_set(a, "bob@localhost", name="Robert", groups=["Family"])
    assert el.get("type") == "result", summary(el)
    item, _ = take_push(a, "bob@localhost")
    assert (item["name"], item["groups"]) == ("Robert", ["Family"])
    # an update without name or groups clears both
    roster_set(a, "bob@localhost")
    item, _ = take_push(a, "bob@localhost")
    assert (item["name"], item["groups"]) == (None, [])
    assert roster_of(a)["bob@localhost"] == item
    a.close()


def test_rfc6121_2_5_roster_remove_then_item_not_found_for_a_missing_item(im):
    a = alice(im)
    roster_get(a)
    roster_set(a, "bob@localhost", name="Bob")
    take_push(a, "bob@localhost")
    # alice sends: <item jid='bob@localhost' subscription='remove'/>
    el = roster_set(a, "bob@localhost", subscription="remove")
    assert el.get("type") == "result", summary(el)
    item, _ = take_push(a, "bob@localhost")
    assert item["subscription"] == "remove", item
    assert roster_of(a) == {}
    # removing it again, or a JID that was never there: item-not-found (§2.5.3)
    for jid in ("bob@localhost", "nobody@localhost"):
        el = roster_set(a, jid, subscription="remove")
        assert stanza_error(el) == ("cancel", "item-not-found"), summary(el)
    a.close()


def test_rfc6121_2_1_6_push_goes_to_every_interested_resource_and_no_other(im):
    desk = alice(im, "desk")
    laptop = alice(im, "laptop")
    phone = alice(im, "phone")  # never asks for the roster: not interested
    phone.send("<presence/>")
    roster_get(desk)
    roster_get(laptop)
    # desk adds carol: desk and laptop get the push, phone does not
    el = roster_set(desk, "carol@localhost", name="Carol")
    assert el.get("type") == "result", summary(el)
    for c in (desk, laptop):
        item, _ = take_push(c, "carol@localhost")
        assert item["name"] == "Carol"
    sync(desk)
    none_arrives(phone, is_push(), QUIET)
    # once phone has fetched the roster it is interested too
    roster_get(phone)
    roster_set(laptop, "carol@localhost", name="C.")
    for c in (desk, laptop, phone):
        assert take_push(c, "carol@localhost")[0]["name"] == "C."
    for c in (desk, laptop, phone):
        c.close()


def test_rfc6121_2_1_6_push_has_no_from_or_the_users_bare_jid(im):
    a = alice(im)
    roster_get(a)
    roster_set(a, "bob@localhost")
    push = take(a, is_push("bob@localhost"))
    # clients MUST ignore pushes from anyone else (§2.1.6), so the server stamps none or ours
    assert push.get("from") in (None, "alice@localhost"), summary(push)
    assert push.get("to") == a.full_jid, summary(push)
    a.close()


def test_rfc6121_2_3_3_roster_set_with_two_items_bad_request(im):
    a = alice(im)
    el = iq(a, "set", "<query xmlns='%s'><item jid='bob@localhost'/><item jid='carol@localhost'/>"
            "</query>" % ROSTER_NS)
    assert stanza_error(el) == ("modify", "bad-request"), summary(el)
    assert roster_of(a) == {}
    a.close()


def test_rfc6121_2_3_3_empty_group_not_acceptable(im):
    a = alice(im)
    el = roster_set(a, "bob@localhost", groups=[""])
    assert stanza_error(el)[1] == "not-acceptable", summary(el)
    assert roster_of(a) == {}
    a.close()


def test_rfc6121_2_3_3_duplicate_groups_bad_request(im):
    # "The server MUST return a <bad-request/> stanza error ... [if] the <item/>
    # element contains more than one <group/> element, but there are duplicate groups"
    a = alice(im)
    el = roster_set(a, "bob@localhost", groups=["Friends", "Friends"])
    assert stanza_error(el) == ("modify", "bad-request"), summary(el)
    a.close()


def test_rfc6121_2_3_3_roster_set_to_another_users_roster_forbidden(im):
    # "The server MUST return a <forbidden/> stanza error to the client if the
    # sender of the roster set is not authorized to update the roster"
    a = alice(im)
    el = iq(a, "set", "<query xmlns='%s'><item jid='carol@localhost'/></query>" % ROSTER_NS,
            to="bob@localhost")
    assert el.get("type") == "error", summary(el)
    assert stanza_error(el)[1] == "forbidden", summary(el)
    b = im_login(im.c2s_port, "bob", PW)
    assert roster_of(b) == {}
    a.close()
    b.close()


@pytest.mark.parametrize("item", ["<item name='no jid'/>", "<item jid='a@b@c'/>",
                                  "<item jid='@localhost'/>", "<item jid=''/>"],
                         ids=["missing", "two-at", "empty-node", "empty"])
def test_rfc6121_2_1_2_1_roster_set_without_a_valid_jid_is_refused(im, item):
    a = alice(im)
    el = iq(a, "set", "<query xmlns='%s'>%s</query>" % (ROSTER_NS, item))
    assert el.get("type") == "error", summary(el)
    # RFC 6120 §8.3.3: jid-malformed for a bad address; bad-request for a missing one
    assert stanza_error(el)[1] in ("jid-malformed", "bad-request"), summary(el)
    assert roster_of(a) == {}
    a.close()


def test_rfc6121_2_roster_survives_a_new_session(im):
    a = alice(im)
    roster_set(a, "bob@localhost", name="Bob", groups=["Friends"])
    a.close()
    a = alice(im, "other")
    assert roster_of(a)["bob@localhost"]["groups"] == ["Friends"]
    a.close()


# -- roster size limit (a server policy, RFC 6121 §2.3.3 / §3.1.3) -----------

def test_rfc6121_2_3_3_roster_size_limit_not_allowed(starling_factory):
    s = starling_factory(host=dict(IM, **{"roster.max_items": "3"}))
    s.adduser("alice", PW)
    a = alice(s)
    for n in range(3):
        el = roster_set(a, "friend%d@localhost" % n)
        assert el.get("type") == "result", summary(el)
    # the fourth new item is refused ...
    el = roster_set(a, "friend3@localhost")
    assert stanza_error(el) == ("cancel", "not-allowed"), summary(el)
    assert sorted(roster_of(a)) == ["friend%d@localhost" % n for n in range(3)]
    # ... but an existing one can still be updated, and a freed slot reused
    assert roster_set(a, "friend0@localhost", name="Zero").get("type") == "result"
    assert roster_set(a, "friend1@localhost", subscription="remove").get("type") == "result"
    assert roster_set(a, "friend3@localhost").get("type") == "result"
    a.close()


# -- stream features -----------------------------------------------------------

def test_xep0237_and_rfc6121_3_4_stream_features_advertised_after_auth(im):
    c = RawClient(im.c2s_port)
    c.starttls()
    assert c.plain("alice", PW).tag.endswith("success")
    f = c.open_stream()
    assert f.find("{urn:xmpp:features:rosterver}ver") is not None, summary(f)
    assert f.find("{urn:xmpp:features:pre-approval}sub") is not None, summary(f)
    c.close()


def test_xep0237_features_not_advertised_before_auth(im):
    c = RawClient(im.c2s_port)
    f = c.starttls()
    assert f.find("{urn:xmpp:features:rosterver}ver") is None, summary(f)
    c.close()


# -- roster versioning (RFC 6121 §2.6, XEP-0237) --------------------------------

def _ver(el):
    q = el.find(ROSTER + "query")
    return q.get("ver") if q is not None else None


def test_xep0237_empty_ver_bootstraps_a_full_roster_with_ver(im):
    a = alice(im)
    roster_set(a, "bob@localhost")
    el = roster_get(a, ver="")
    assert el.get("type") == "result" and [i["jid"] for i in items_of(el)] == ["bob@localhost"]
    assert _ver(el), summary(el)
    a.close()


def test_xep0237_current_ver_gives_an_empty_result_and_no_pushes(im):
    a = alice(im)
    roster_set(a, "bob@localhost")
    roster_set(a, "carol@localhost")
    ver = _ver(roster_get(a))
    a.close()
    a = alice(im, "again")
    el = roster_get(a, ver=ver)
    # nothing changed: an empty IQ result, no <query/> (§2.6.3)
    assert el.get("type") == "result" and len(el) == 0, summary(el)
    none_arrives(a, is_push(), QUIET)
    a.close()


def test_xep0237_older_ver_gives_empty_result_then_pushes_for_just_the_changes(im):
    a = alice(im)
    roster_set(a, "bob@localhost", name="Bob")
    roster_set(a, "carol@localhost", name="Carol")
    roster_set(a, "dave@localhost", name="Dave")
    old = _ver(roster_get(a))
    # while the client is away: one update, one removal, one addition
    roster_set(a, "bob@localhost", name="Bobby")
    roster_set(a, "carol@localhost", subscription="remove")
    roster_set(a, "erin@localhost", name="Erin")
    current = _ver(roster_get(a))
    a.close()

    a = alice(im, "again")
    el = roster_get(a, ver=old)
    assert el.get("type") == "result", summary(el)
    if len(el):  # the server may answer with the full roster instead (§2.6.3)
        assert _ver(el) == current
        assert sorted(i["jid"] for i in items_of(el)) == ["bob@localhost", "dave@localhost",
                                                          "erin@localhost"]
        a.close()
        return
    got = {}
    for _ in range(3):
        item, ver = take_push(a)
        got[item["jid"]] = (item, ver)
    assert sorted(got) == ["bob@localhost", "carol@localhost", "erin@localhost"]
    assert got["bob@localhost"][0]["name"] == "Bobby"
    assert got["carol@localhost"][0]["subscription"] == "remove"
    assert got["erin@localhost"][0]["name"] == "Erin"
    # dave did not change: no push for him
    none_arrives(a, is_push(), QUIET)
    # every push carries a version, the newest being the roster's current one
    assert max(int(v) for _, v in got.values()) == int(current)
    a.close()


def test_xep0237_interim_pushes_sent_in_version_order(im):
    # The client stores the 'ver' of each push it handles (RFC 6121 §2.6.1,
    # §2.6.3), so the last push it receives must carry the current version;
    # pushes out of order leave the client with a stale version.
    a = alice(im)
    old = _ver(roster_get(a))
    contacts = ["c%02d@localhost" % n for n in range(12)]
    for jid in contacts:
        roster_set(a, jid)
    current = _ver(roster_get(a))
    a.close()
    a = alice(im, "again")
    el = roster_get(a, ver=old)
    assert el.get("type") == "result" and len(el) == 0, summary(el)
    vers = [int(take_push(a)[1]) for _ in contacts]
    assert vers[-1] == int(current) and vers == sorted(vers), \
        "push versions arrived as %s (current %s)" % (vers, current)
    a.close()


def test_xep0237_unknown_ver_gives_the_full_roster(im):
    a = alice(im)
    roster_set(a, "bob@localhost")
    for bogus in ("999999", "not-a-version"):
        el = roster_get(a, ver=bogus)
        assert el.get("type") == "result" and [i["jid"] for i in items_of(el)] == ["bob@localhost"], \
            summary(el)
        assert _ver(el)
    a.close()


def test_xep0237_push_versions_grow_with_each_change(im):
    a = alice(im)
    v0 = int(_ver(roster_get(a)))
    roster_set(a, "bob@localhost")
    _, v1 = take_push(a, "bob@localhost")
    roster_set(a, "bob@localhost", name="B")
    _, v2 = take_push(a, "bob@localhost")
    assert v0 < int(v1) < int(v2)
    assert int(_ver(roster_get(a))) == int(v2)
    a.close()


def test_rfc6120_roster_query_without_session_after_stream_close(im):
    # a roster get racing the stream close must not crash the daemon
    a = alice(im)
    a.send("<iq type='get' id='late'><query xmlns='%s'/></iq></stream:stream>" % ROSTER_NS)
    a.wait_closed(5)
    a.close()
    b = alice(im, "after")
    assert roster_of(b) == {}
    b.close()
