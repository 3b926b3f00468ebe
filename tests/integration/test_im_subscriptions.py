"""test_im_subscriptions.py - presence subscriptions (RFC 6121 §3 and the
state tables of Appendix A) between two local accounts, with raw clients.

Each test walks one path through the subscription states and checks, at
every step, what both parties see: the subscription stanza itself (always
from the bare JID, §3.1.2), the roster pushes to both users' interested
resources, and the presence that starts or stops flowing.

    alice sends:     <presence to='bob@localhost' type='subscribe'/>
    alice receives:  push  <item jid='bob@localhost' subscription='none' ask='subscribe'/>
    bob receives:    <presence from='alice@localhost' type='subscribe'/>
    bob sends:       <presence to='alice@localhost' type='subscribed'/>
    bob receives:    push  <item jid='alice@localhost' subscription='from'/>
    alice receives:  push  <item jid='bob@localhost' subscription='to'/>
    alice receives:  <presence from='bob@localhost' type='subscribed'/>
    alice receives:  <presence from='bob@localhost/phone'/>        (§3.1.5)
"""
import pytest

from conftest import SLOW
from rawxmpp import (im_login, is_push, none_arrives, presence, roster_get, roster_of, roster_set,
                     stanza, summary, sync, take, take_push)

PW = "subscriptions pw"
IM = {"modules": "disco version ping time register roster presence"}
QUIET = 0.5 * SLOW


@pytest.fixture
def im(starling_factory):
    s = starling_factory(host=IM)
    for user in ("alice", "bob", "carol"):
        s.adduser(user, PW)
    return s


def online(server, user, resource, roster=True, available=True):
    """user/resource logged in; interested (roster fetched) and available
    unless told otherwise. The echo of its own presence is consumed."""
    c = im_login(server.c2s_port, user, PW, resource)
    if roster:
        assert roster_get(c).get("type") == "result"
    if available:
        c.send("<presence/>")
        take(c, presence(from_=c.full_jid, type=None))
    return c


def subscribe(c, contact, type="subscribe"):
    c.send("<presence to='%s' type='%s'/>" % (contact, type))


def item(c, jid):
    """The state of jid in c's roster, as (subscription, ask, approved), or None."""
    it = roster_of(c).get(jid)
    return (it["subscription"], it["ask"], it["approved"]) if it else None


def push_until(c, jid, subscription):
    """Roster pushes for jid until one shows this subscription (a server may
    push a row more than once while a request is pending); returns it."""
    while True:
        it, _ = take_push(c, jid)
        if it["subscription"] == subscription:
            return it


def alice_subscribes_to_bob(a, b):
    """The §3.1 exchange up to alice: 'to', bob: 'from'; checks every step."""
    subscribe(a, "bob@localhost")
    it, _ = take_push(a, "bob@localhost")
    assert (it["subscription"], it["ask"]) == ("none", "subscribe"), it  # §3.1.2
    req = take(b, presence(type="subscribe"))
    assert req.get("from") == "alice@localhost", summary(req)  # bare JID, §3.1.2
    subscribe(b, "alice@localhost", "subscribed")
    it, _ = take_push(b, "alice@localhost")
    assert (it["subscription"], it["ask"]) == ("from", None), it  # §3.1.5
    it, _ = take_push(a, "bob@localhost")
    assert (it["subscription"], it["ask"]) == ("to", None), it  # §3.1.6
    take(a, presence(from_="bob@localhost", type="subscribed"))
    take(a, presence(from_=b.full_jid, type=None))  # bob's current presence, §3.1.5


# -- §3.1 requesting and approving ---------------------------------------------

def test_rfc6121_3_1_subscribe_approve_updates_both_rosters_and_presence_flows_one_way(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    assert item(a, "bob@localhost") == ("to", None, None)
    assert item(b, "alice@localhost") == ("from", None, None)
    # presence now flows from bob to alice ...
    b.send("<presence><show>away</show></presence>")
    p = take(a, presence(from_=b.full_jid, type=None))
    assert p.findtext("{jabber:client}show") == "away"
    # ... and not from alice to bob (bob is not subscribed to alice)
    a.send("<presence><show>dnd</show></presence>")
    sync(a)
    none_arrives(b, presence(from_=a.full_jid), QUIET)
    a.close()
    b.close()


def test_rfc6121_3_1_3_contact_gets_no_roster_item_before_answering(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    subscribe(a, "bob@localhost")
    take(b, presence(from_="alice@localhost", type="subscribe"))
    # a pending inbound request is not a roster item of the contact
    none_arrives(b, is_push("alice@localhost"), QUIET)
    assert item(b, "alice@localhost") is None
    a.close()
    b.close()


def test_rfc6121_3_1_mutual_subscription_both(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    # bob asks back; alice approves
    subscribe(b, "alice@localhost")
    it, _ = take_push(b, "alice@localhost")
    assert (it["subscription"], it["ask"]) == ("from", "subscribe"), it
    take(a, presence(from_="bob@localhost", type="subscribe"))
    subscribe(a, "bob@localhost", "subscribed")
    push_until(a, "bob@localhost", "both")
    it, _ = take_push(b, "alice@localhost")
    assert (it["subscription"], it["ask"]) == ("both", None), it
    take(b, presence(from_="alice@localhost", type="subscribed"))
    take(b, presence(from_=a.full_jid, type=None))
    # presence flows both ways
    a.send("<presence><status>hi bob</status></presence>")
    assert take(b, presence(from_=a.full_jid, type=None)).findtext("{jabber:client}status") == "hi bob"
    b.send("<presence><status>hi alice</status></presence>")
    assert take(a, presence(from_=b.full_jid, type=None)).findtext("{jabber:client}status") == "hi alice"
    assert item(a, "bob@localhost") == ("both", None, None)
    assert item(b, "alice@localhost") == ("both", None, None)
    a.close()
    b.close()


def test_rfc6121_3_1_3_already_subscribed_request_answered_by_the_server(im):
    # Appendix A.3.1: an inbound subscribe in state "From" is not delivered;
    # the contact's server answers on the contact's behalf with subscribed
    # (which alice's server, in state "To", does not deliver: A.3.2) and
    # bob's current presence.
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    subscribe(a, "bob@localhost")
    take(a, presence(from_=b.full_jid, type=None))
    none_arrives(b, presence(type="subscribe"), QUIET)
    assert item(a, "bob@localhost")[0] == "to"
    a.close()
    b.close()


# -- §3.2 cancelling and denying -----------------------------------------------

def test_rfc6121_3_2_1_deny_a_request_with_unsubscribed(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    subscribe(a, "bob@localhost")
    take_push(a, "bob@localhost")
    take(b, presence(from_="alice@localhost", type="subscribe"))
    # bob says no
    subscribe(b, "alice@localhost", "unsubscribed")
    take(a, presence(from_="bob@localhost", type="unsubscribed"))
    it, _ = take_push(a, "bob@localhost")
    assert (it["subscription"], it["ask"]) == ("none", None), it  # A.3.4: ask cleared
    assert item(b, "alice@localhost") is None
    # nothing of bob's presence reaches alice
    b.send("<presence><show>chat</show></presence>")
    sync(b)
    none_arrives(a, presence(from_=b.full_jid, type=None), QUIET)
    a.close()
    b.close()


def test_rfc6121_3_2_cancel_a_granted_subscription_with_unsubscribed(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    # bob revokes alice's subscription to his presence
    subscribe(b, "alice@localhost", "unsubscribed")
    assert take_push(b, "alice@localhost")[0]["subscription"] == "none"  # §3.2.2
    take(a, presence(from_="bob@localhost", type="unsubscribed"))
    assert take_push(a, "bob@localhost")[0]["subscription"] == "none"  # §3.2.3
    # and alice is told bob is now unavailable to her (§3.2.2)
    take(a, presence(from_=b.full_jid, type="unavailable"))
    b.send("<presence><show>away</show></presence>")
    sync(b)
    none_arrives(a, presence(from_=b.full_jid, type=None), QUIET)
    a.close()
    b.close()


def test_rfc6121_appendix_a_3_4_unsolicited_unsubscribed_not_delivered(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    # no subscription either way: alice's server has nothing to cancel
    subscribe(b, "alice@localhost", "unsubscribed")
    sync(b)
    none_arrives(a, presence(from_="bob@localhost"), QUIET)
    none_arrives(a, is_push(), 0.05)
    a.close()
    b.close()


# -- §3.3 unsubscribing --------------------------------------------------------

def test_rfc6121_3_3_unsubscribe_ends_the_users_subscription(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    subscribe(a, "bob@localhost", "unsubscribe")
    assert take_push(a, "bob@localhost")[0]["subscription"] == "none"  # §3.3.2
    take(b, presence(from_="alice@localhost", type="unsubscribe"))  # §3.3.3
    assert take_push(b, "alice@localhost")[0]["subscription"] == "none"
    # the contact's server sends unavailable from bob's resources (§3.3.3)
    take(a, presence(from_=b.full_jid, type="unavailable"))
    b.send("<presence><show>xa</show></presence>")
    sync(b)
    none_arrives(a, presence(from_=b.full_jid, type=None), QUIET)
    a.close()
    b.close()


def test_rfc6121_3_3_unsubscribe_from_both_leaves_from(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    subscribe(b, "alice@localhost")
    take(a, presence(from_="bob@localhost", type="subscribe"))
    subscribe(a, "bob@localhost", "subscribed")
    take(b, presence(from_=a.full_jid, type=None))
    # both -> alice unsubscribes: alice 'from', bob 'to'
    subscribe(a, "bob@localhost", "unsubscribe")
    take(b, presence(from_="alice@localhost", type="unsubscribe"))
    assert item(a, "bob@localhost")[0] == "from"
    assert item(b, "alice@localhost")[0] == "to"
    # alice's presence still reaches bob, bob's no longer reaches alice
    a.send("<presence><status>still here</status></presence>")
    take(b, presence(from_=a.full_jid, type=None))
    b.send("<presence><status>hidden</status></presence>")
    sync(b)
    none_arrives(a, presence(from_=b.full_jid, type=None), QUIET)
    a.close()
    b.close()


def test_rfc6121_appendix_a_3_3_unsubscribe_withdraws_a_pending_request(im):
    a = online(im, "alice", "desk")
    subscribe(a, "bob@localhost")  # bob is offline: the request is stored
    take_push(a, "bob@localhost")
    subscribe(a, "bob@localhost", "unsubscribe")  # alice changes her mind
    assert take_push(a, "bob@localhost")[0]["ask"] is None
    sync(a)
    b = online(im, "bob", "phone")
    # "None + Pending In" -> "None": nothing is left to deliver to bob
    none_arrives(b, presence(from_="alice@localhost", type="subscribe"), QUIET)
    a.close()
    b.close()


# -- §3.4 pre-approval -----------------------------------------------------------

def test_rfc6121_3_4_pre_approved_request_accepted_automatically(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    # bob approves alice before she asks: an item with approved='true' (§3.4.2)
    subscribe(b, "alice@localhost", "subscribed")
    it, _ = take_push(b, "alice@localhost")
    assert (it["subscription"], it["approved"]) == ("none", "true"), it
    sync(b)
    # the pre-approval stays on bob's server: alice sees nothing yet
    none_arrives(a, presence(from_="bob@localhost"), QUIET)
    # alice asks: accepted without bob seeing the request
    subscribe(a, "bob@localhost")
    take(a, presence(from_="bob@localhost", type="subscribed"))
    it, _ = take_push(b, "alice@localhost")
    assert (it["subscription"], it["approved"]) == ("from", None), it
    none_arrives(b, presence(type="subscribe"), QUIET)
    assert item(a, "bob@localhost") == ("to", None, None)
    a.close()
    b.close()


def test_rfc6121_3_4_automatic_approval_sends_the_contacts_presence(im):
    # The server approves "on the contact's behalf" (§3.1.3), so what follows
    # an approval (§3.1.5: presence from all of the contact's available
    # resources) follows it too, as it does for the "From" auto-reply.
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    subscribe(b, "alice@localhost", "subscribed")
    take_push(b, "alice@localhost")
    subscribe(a, "bob@localhost")
    take(a, presence(from_="bob@localhost", type="subscribed"))
    take(a, presence(from_=b.full_jid, type=None))
    a.close()
    b.close()


def test_rfc6121_3_4_pre_approval_revoked_with_unsubscribed(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    subscribe(b, "alice@localhost", "subscribed")
    assert take_push(b, "alice@localhost")[0]["approved"] == "true"
    subscribe(b, "alice@localhost", "unsubscribed")
    assert take_push(b, "alice@localhost")[0]["approved"] is None
    # now alice's request waits for bob again
    subscribe(a, "bob@localhost")
    take(b, presence(from_="alice@localhost", type="subscribe"))
    assert item(a, "bob@localhost") == ("none", "subscribe", None)
    a.close()
    b.close()


# -- §3.1.3 the contact is offline, or does not exist ------------------------------

def test_rfc6121_3_1_3_request_to_offline_contact_delivered_at_next_available_presence(im):
    a = online(im, "alice", "desk")
    subscribe(a, "bob@localhost")
    take_push(a, "bob@localhost")
    sync(a)
    # bob logs in: binding and fetching the roster deliver nothing ...
    b = online(im, "bob", "phone", available=False)
    none_arrives(b, presence(type="subscribe"), QUIET)
    # ... his initial presence does (§3.1.3), as a jabber:client presence
    b.send("<presence/>")
    req = take(b, presence(from_="alice@localhost", type="subscribe"))
    assert req.get("to") in (None, "bob@localhost", b.full_jid), summary(req)
    # unanswered, it comes again at the next login
    b.close()
    b = online(im, "bob", "laptop", available=False)
    none_arrives(b, presence(type="subscribe"), 0.2 * SLOW)
    b.send("<presence/>")
    take(b, presence(from_="alice@localhost", type="subscribe"))
    # answering it completes the subscription for alice, who is online
    subscribe(b, "alice@localhost", "subscribed")
    take(a, presence(from_="bob@localhost", type="subscribed"))
    assert take_push(a, "bob@localhost")[0]["subscription"] == "to"
    a.close()
    b.close()


def test_rfc6121_3_1_3_answer_while_user_offline_reaches_her_roster(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    subscribe(a, "bob@localhost")
    take(b, presence(from_="alice@localhost", type="subscribe"))
    a.close()
    sync(b)
    subscribe(b, "alice@localhost", "subscribed")
    take_push(b, "alice@localhost")
    sync(b)
    a = online(im, "alice", "again")
    assert item(a, "bob@localhost") == ("to", None, None)
    b.close()
    a.close()


def test_rfc6121_3_1_3_request_to_nonexistent_account_answered_unsubscribed(im):
    a = online(im, "alice", "desk")
    subscribe(a, "ghost@localhost")
    assert take_push(a, "ghost@localhost")[0]["ask"] == "subscribe"
    take(a, presence(from_="ghost@localhost", type="unsubscribed"))
    it, _ = take_push(a, "ghost@localhost")
    assert (it["subscription"], it["ask"]) == ("none", None), it
    a.close()


# -- §2.5.2 removing a contact ------------------------------------------------

def test_rfc6121_2_5_2_removing_item_with_both_cancels_both_ways(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    alice_subscribes_to_bob(a, b)
    subscribe(b, "alice@localhost")
    take(a, presence(from_="bob@localhost", type="subscribe"))
    subscribe(a, "bob@localhost", "subscribed")
    take(b, presence(from_=a.full_jid, type=None))
    assert item(b, "alice@localhost")[0] == "both"
    # alice removes bob from her roster
    el = roster_set(a, "bob@localhost", subscription="remove")
    assert el.get("type") == "result", summary(el)
    push_until(a, "bob@localhost", "remove")
    # bob is told both ways, and his roster follows (§2.5.2)
    take(b, presence(from_="alice@localhost", type="unsubscribe"))
    take(b, presence(from_="alice@localhost", type="unsubscribed"))
    take(b, presence(from_=a.full_jid, type="unavailable"))
    push_until(b, "alice@localhost", "none")
    assert item(b, "alice@localhost") == ("none", None, None)
    # no presence flows any more, in either direction
    a.send("<presence><status>gone</status></presence>")
    b.send("<presence><status>gone too</status></presence>")
    sync(a)
    sync(b)
    none_arrives(b, presence(from_=a.full_jid, type=None), QUIET)
    none_arrives(a, presence(from_=b.full_jid, type=None), 0.05)
    assert item(a, "bob@localhost") is None
    a.close()
    b.close()


def test_rfc6121_2_5_2_removing_item_with_pending_request_denies_it(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    subscribe(a, "bob@localhost")
    take(b, presence(from_="alice@localhost", type="subscribe"))
    # bob puts alice in his roster, then removes her without answering
    roster_set(b, "alice@localhost", name="Alice")
    take_push(b, "alice@localhost")
    roster_set(b, "alice@localhost", subscription="remove")
    take(a, presence(from_="bob@localhost", type="unsubscribed"))
    assert item(a, "bob@localhost") == ("none", None, None)
    a.close()
    b.close()


def test_rfc6121_3_subscription_stanzas_reach_every_available_resource(im):
    a = online(im, "alice", "desk")
    b1 = online(im, "bob", "phone")
    b2 = online(im, "bob", "laptop")
    b3 = online(im, "bob", "tablet", available=False)
    subscribe(a, "bob@localhost")
    for b in (b1, b2):
        take(b, presence(from_="alice@localhost", type="subscribe"))
    none_arrives(b3, presence(type="subscribe"), QUIET)
    # one resource answers; every interested one sees the push
    subscribe(b2, "alice@localhost", "subscribed")
    for b in (b1, b2, b3):
        assert take_push(b, "alice@localhost")[0]["subscription"] == "from"
    # alice gets the presence of both available resources of bob
    for b in (b1, b2):
        take(a, presence(from_=b.full_jid, type=None))
    for c in (a, b1, b2, b3):
        c.close()


def test_rfc6121_3_1_2_subscription_from_full_jid_stamped_bare(im):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    a.send("<presence to='bob@localhost/phone' type='subscribe' id='s1'/>")
    req = take(b, presence(type="subscribe"))
    assert req.get("from") == "alice@localhost", summary(req)
    assert item(a, "bob@localhost")[1] == "subscribe"
    a.close()
    b.close()


@pytest.mark.parametrize("kind", ["subscribe", "subscribed"])
def test_rfc6121_3_subscription_stanza_keeps_its_id_and_status(im, kind):
    a = online(im, "alice", "desk")
    b = online(im, "bob", "phone")
    if kind == "subscribed":
        subscribe(b, "alice@localhost")
        take(a, presence(type="subscribe"))
    a.send("<presence to='bob@localhost' type='%s' id='keep-me'><status>it is alice</status>"
           "</presence>" % kind)
    p = take(b, stanza("presence", from_="alice@localhost", type=kind))
    assert p.get("id") == "keep-me", summary(p)
    a.close()
    b.close()
