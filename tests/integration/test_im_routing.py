"""test_im_routing.py - messages to a bare JID with several resources online
(RFC 6121 §8.5.2.1.1, §8.5.3.2.1), decided by presence priority.

alice has three resources; bob sends to alice@localhost:

    alice/hi   <presence><priority>5</priority></presence>
    alice/lo   <presence><priority>1</priority></presence>
    alice/neg  <presence><priority>-1</priority></presence>

    chat/normal  -> the highest non-negative priority (all of them on a tie)
    headline     -> every non-negative resource
    groupchat    -> error (no resource gets a groupchat to a bare JID)
    nobody available with priority >= 0 -> service-unavailable

OFFLINE: the service-unavailable answers for an account with no available
resource are what §8.5.2.2.1 allows without offline storage. mod_offline is
about to store those messages instead (XEP-0160); the tests marked
"OFFLINE" will then need to expect storage and later delivery.
"""
import pytest

from conftest import SLOW
from rawxmpp import (CLIENT, im_login, none_arrives, presence, stanza, stanza_error, summary, sync,
                     take)

PW = "routing pw"
IM = {"modules": "disco version ping time register roster presence"}
QUIET = 0.5 * SLOW


@pytest.fixture
def im(starling_factory):
    s = starling_factory(host=IM)
    for user in ("alice", "bob"):
        s.adduser(user, PW)
    return s


def resource(server, name, priority):
    """alice/name, available with this priority (None: connected, not available)."""
    c = im_login(server.c2s_port, "alice", PW, name)
    if priority is not None:
        c.send("<presence><priority>%d</priority></presence>" % priority)
        take(c, presence(from_=c.full_jid, type=None))
    return c


def message(body, type=None):
    def pred(el):
        return el.tag == CLIENT + "message" and el.findtext(CLIENT + "body") == body
    pred.__doc__ = "the message %r" % body
    return pred


def send(c, to, body, type="chat", id=None):
    c.send("<message to='%s'%s%s><body>%s</body></message>"
           % (to, " type='%s'" % type if type else "", " id='%s'" % id if id else "", body))


def receivers(clients, body, expected):
    """Exactly the clients in expected receive the message body."""
    for c in expected:
        m = take(c, message(body))
        assert m.get("from") == "bob@localhost/pc", summary(m)
    for c in clients:
        if c not in expected:
            none_arrives(c, message(body), QUIET)


def test_rfc6121_8_5_2_1_1_highest_priority_resource_wins(im):
    hi, lo, neg = resource(im, "hi", 5), resource(im, "lo", 1), resource(im, "neg", -1)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "for the best")
    receivers([hi, lo, neg], "for the best", [hi])
    send(bob, "alice@localhost", "a normal one", type=None)
    receivers([hi, lo, neg], "a normal one", [hi])
    # priorities change with presence: lo becomes the best
    lo.send("<presence><priority>10</priority></presence>")
    take(lo, presence(from_=lo.full_jid, type=None))
    send(bob, "alice@localhost", "after the change")
    receivers([hi, lo, neg], "after the change", [lo])
    for c in (hi, lo, neg, bob):
        c.close()


def test_rfc6121_8_5_2_1_1_equal_highest_priorities_all_receive(im):
    a, b, lo = resource(im, "a", 5), resource(im, "b", 5), resource(im, "lo", 1)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "to both fives")
    receivers([a, b, lo], "to both fives", [a, b])
    for c in (a, b, lo, bob):
        c.close()


def test_rfc6121_8_5_2_1_1_negative_priority_and_unavailable_resources_excluded(im):
    neg = resource(im, "neg", -1)
    silent = resource(im, "silent", None)  # connected, never sent presence
    ok = resource(im, "ok", 0)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "zero is enough")
    receivers([neg, silent, ok], "zero is enough", [ok])
    # the full JID still reaches a negative-priority resource (§8.5.3.1)
    send(bob, neg.full_jid, "direct to neg")
    take(neg, message("direct to neg"))
    for c in (neg, silent, ok, bob):
        c.close()


def test_rfc6121_8_5_2_2_only_negative_priority_resources_service_unavailable(im):
    # OFFLINE: with mod_offline this message will be stored instead
    neg = resource(im, "neg", -1)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "nobody to take it", id="m1")
    err = take(bob, stanza("message", type="error"))
    assert err.get("id") == "m1" and err.get("from") == "alice@localhost", summary(err)
    assert stanza_error(err) == ("cancel", "service-unavailable"), summary(err)
    none_arrives(neg, message("nobody to take it"), QUIET)
    neg.close()
    bob.close()


def test_rfc6121_8_5_2_2_no_available_resource_service_unavailable(im):
    # OFFLINE: with mod_offline this message will be stored instead
    silent = resource(im, "silent", None)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "nobody home", id="m2")
    err = take(bob, stanza("message", type="error"))
    assert stanza_error(err) == ("cancel", "service-unavailable"), summary(err)
    none_arrives(silent, message("nobody home"), QUIET)
    silent.close()
    # and with no session at all
    send(bob, "alice@localhost", "really nobody", id="m3")
    err = take(bob, stanza("message", type="error", id="m3"))
    assert stanza_error(err) == ("cancel", "service-unavailable"), summary(err)
    bob.close()


def test_rfc6121_8_5_3_2_1_full_jid_of_gone_resource_treated_as_bare(im):
    hi, lo = resource(im, "hi", 5), resource(im, "lo", 1)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost/gone", "to a gone resource")
    receivers([hi, lo], "to a gone resource", [hi])
    for c in (hi, lo, bob):
        c.close()


def test_rfc6121_8_5_2_1_1_headline_to_every_non_negative_resource(im):
    hi, lo, neg = resource(im, "hi", 5), resource(im, "lo", 1), resource(im, "neg", -1)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "news for all", type="headline")
    receivers([hi, lo, neg], "news for all", [hi, lo])
    for c in (hi, lo, neg, bob):
        c.close()


def test_rfc6121_8_5_2_2_headline_with_nobody_available_dropped_silently(im):
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, "alice@localhost", "stale news", type="headline")
    sync(bob)
    none_arrives(bob, stanza("message", type="error"), QUIET)
    bob.close()


@pytest.mark.parametrize("to", ["alice@localhost", "alice@localhost/gone"], ids=["bare", "gone-full"])
def test_rfc6121_8_5_2_1_1_groupchat_to_bare_jid_is_an_error(im, to):
    hi = resource(im, "hi", 5)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    send(bob, to, "not a room", type="groupchat", id="g1")
    err = take(bob, stanza("message", type="error"))
    assert err.get("id") == "g1" and stanza_error(err)[1] == "service-unavailable", summary(err)
    none_arrives(hi, message("not a room"), QUIET)
    hi.close()
    bob.close()


def test_rfc6121_8_5_2_1_1_resource_that_went_unavailable_no_longer_chosen(im):
    hi, lo = resource(im, "hi", 5), resource(im, "lo", 1)
    bob = im_login(im.c2s_port, "bob", PW, "pc")
    hi.send("<presence type='unavailable'/>")
    sync(hi)
    send(bob, "alice@localhost", "hi is away")
    receivers([hi, lo], "hi is away", [lo])
    for c in (hi, lo, bob):
        c.close()
