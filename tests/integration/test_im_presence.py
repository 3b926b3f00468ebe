"""test_im_presence.py - presence (RFC 6121 §4): initial presence and its
broadcast, probes at login, updates, unavailable on every way a session can
end, directed presence, presence errors, and no leaks to non-subscribers.

The cast, set up by befriend() before each conversation:

    bob   subscribes to alice (bob: 'to', alice: 'from') - bob sees alice
    carol has no subscription with anyone                - carol sees nothing

    alice sends:    <presence/>
    bob receives:   <presence from='alice@localhost/desk' to='bob@localhost'/>
    carol receives: nothing
"""
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import SLOW
from rawxmpp import (CLIENT, STREAMS, discard, im_login, none_arrives, presence, roster_get,
                     stanza_error, summary, sync, take)

PW = "presence pw"
IM = {"modules": "disco version ping time register roster presence"}
QUIET = 0.5 * SLOW


@pytest.fixture
def im(starling_factory):
    s = starling_factory(host=IM)
    for user in ("alice", "bob", "carol"):
        s.adduser(user, PW)
    return s


def online(server, user, resource, available=True, show=None):
    c = im_login(server.c2s_port, user, PW, resource)
    assert roster_get(c).get("type") == "result"
    if available:
        c.send("<presence>%s</presence>" % ("<show>%s</show>" % show if show else ""))
        take(c, presence(from_=c.full_jid, type=None))
    return c


def befriend(server, watcher, contact):
    """watcher subscribes to contact's presence (watcher 'to', contact 'from'),
    both logged in just for the exchange and logged out again."""
    w = online(server, watcher, "setup")
    c = online(server, contact, "setup")
    w.send("<presence to='%s@localhost' type='subscribe'/>" % contact)
    take(c, presence(from_="%s@localhost" % watcher, type="subscribe"))
    c.send("<presence to='%s@localhost' type='subscribed'/>" % watcher)
    take(w, presence(from_="%s@localhost" % contact, type="subscribed"))
    for x in (w, c):
        sync(x)
        x.send("</stream:stream>")
        x.wait_closed(5)
        x.close()


def available_from(c):
    return presence(from_=c.full_jid, type=None)


def unavailable_from(c):
    return presence(from_=c.full_jid, type="unavailable")


# -- §4.2 initial presence -----------------------------------------------------

def test_rfc6121_4_2_2_initial_presence_to_from_subscribers_and_own_resources(im):
    befriend(im, "bob", "alice")
    bob = online(im, "bob", "phone")
    carol = online(im, "carol", "pc")
    laptop = online(im, "alice", "laptop")
    discard(laptop)
    desk = online(im, "alice", "desk", available=False)
    # alice/desk sends: <presence><show>chat</show></presence>
    desk.send("<presence><show>chat</show><status>at my desk</status></presence>")
    # bob (a 'from' subscriber of alice) receives it, addressed to him (§4.2.2)
    p = take(bob, available_from(desk))
    assert p.get("to") in ("bob@localhost", bob.full_jid), summary(p)
    assert p.findtext(CLIENT + "status") == "at my desk"
    # so do all of alice's available resources, the sender included (§4.2.2)
    take(laptop, available_from(desk))
    take(desk, available_from(desk))
    # carol has no subscription: nothing
    sync(desk)
    none_arrives(carol, presence(from_=desk.full_jid), QUIET)
    for c in (bob, carol, laptop, desk):
        c.close()


def test_rfc6121_4_2_2_new_resource_learns_presence_of_its_siblings(im):
    laptop = online(im, "alice", "laptop", show="away")
    desk = online(im, "alice", "desk", available=False)
    desk.send("<presence/>")
    p = take(desk, available_from(laptop))
    assert p.findtext(CLIENT + "show") == "away"
    laptop.close()
    desk.close()


def test_rfc6121_4_2_no_presence_before_initial_presence(im):
    befriend(im, "bob", "alice")
    quiet = online(im, "bob", "quiet", available=False)  # connected, not available
    loud = online(im, "bob", "loud")
    a = online(im, "alice", "desk")
    take(loud, available_from(a))
    a.send("<presence><show>away</show></presence>")
    take(loud, available_from(a))
    none_arrives(quiet, presence(from_=a.full_jid), QUIET)
    for c in (quiet, loud, a):
        c.close()


# -- §4.3 probes at login ----------------------------------------------------------

def test_rfc6121_4_3_login_receives_current_presence_of_contacts_it_is_subscribed_to(im):
    befriend(im, "bob", "alice")  # bob sees alice
    befriend(im, "alice", "carol")  # alice sees carol; carol does not see alice
    a = online(im, "alice", "desk", show="dnd")
    c = online(im, "carol", "pc", show="xa")
    # bob logs in: his initial presence makes the server probe alice (§4.3.2)
    bob = online(im, "bob", "phone", available=False)
    none_arrives(bob, presence(from_=a.full_jid), 0.2 * SLOW)  # not before initial presence
    bob.send("<presence/>")
    p = take(bob, available_from(a))
    assert p.findtext(CLIENT + "show") == "dnd", summary(p)
    # alice logs in again with a second resource: she gets carol's, carol gets nothing of hers
    discard(c)
    a2 = online(im, "alice", "tablet", available=False)
    a2.send("<presence/>")
    assert take(a2, available_from(c)).findtext(CLIENT + "show") == "xa"
    none_arrives(c, presence(from_=a2.full_jid), QUIET)
    for x in (a, c, bob, a2):
        x.close()


def test_rfc6121_4_3_offline_contact_reveals_nothing(im):
    befriend(im, "bob", "alice")
    bob = online(im, "bob", "phone")
    # alice is offline: nothing (a server may send unavailable, never available)
    none_arrives(bob, presence(from_="alice@localhost", type=None), QUIET)
    bob.close()


def test_rfc6121_4_3_client_probe_reveals_nothing_to_a_non_subscriber(im):
    a = online(im, "alice", "desk")
    carol = online(im, "carol", "pc")
    carol.send("<presence to='alice@localhost' type='probe'/>")
    sync(carol)
    none_arrives(carol, presence(from_=a.full_jid), QUIET)
    a.close()
    carol.close()


# -- §4.4 updates ------------------------------------------------------------

def test_rfc6121_4_4_presence_updates_and_priority_reach_subscribers(im):
    befriend(im, "bob", "alice")
    bob = online(im, "bob", "phone")
    a = online(im, "alice", "desk")
    take(bob, available_from(a))
    for show, prio in (("away", "3"), ("xa", "-5"), (None, "10")):
        a.send("<presence>%s<priority>%s</priority></presence>"
               % ("<show>%s</show>" % show if show else "", prio))
        p = take(bob, available_from(a))
        assert p.findtext(CLIENT + "show") == show and p.findtext(CLIENT + "priority") == prio, \
            summary(p)
    a.close()
    bob.close()


# -- §4.5 unavailable, however the session ends -------------------------------------

def _alice_seen_by_bob(im):
    befriend(im, "bob", "alice")
    bob = online(im, "bob", "phone")
    sibling = online(im, "alice", "laptop")
    a = online(im, "alice", "desk")
    take(bob, available_from(a))
    take(sibling, available_from(a))
    return a, bob, sibling


def test_rfc6121_4_5_unavailable_on_logout(im):
    a, bob, sibling = _alice_seen_by_bob(im)
    a.send("<presence type='unavailable'><status>bye</status></presence>")
    p = take(bob, unavailable_from(a))
    assert p.findtext(CLIENT + "status") == "bye"
    take(sibling, unavailable_from(a))
    a.send("</stream:stream>")
    assert a.wait_closed(5)
    for c in (a, bob, sibling):
        c.close()


def test_rfc6121_4_5_2_unavailable_when_stream_closed_without_presence(im):
    a, bob, sibling = _alice_seen_by_bob(im)
    a.send("</stream:stream>")
    take(bob, unavailable_from(a))
    take(sibling, unavailable_from(a))
    for c in (a, bob, sibling):
        c.close()


def test_rfc6121_4_5_2_unavailable_after_tcp_reset(im):
    a, bob, sibling = _alice_seen_by_bob(im)
    # the client crashes: RST, no </stream:stream>, no TLS close_notify
    a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.sock.close()
    take(bob, unavailable_from(a), timeout=5 * SLOW)
    take(sibling, unavailable_from(a), timeout=5 * SLOW)
    bob.close()
    sibling.close()


CRASHING_CLIENT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, %r)
    from rawxmpp import im_login, presence, take
    c = im_login(int(sys.argv[1]), "alice", sys.argv[2], "crashy")
    c.send("<presence/>")
    take(c, presence(from_=c.full_jid, type=None))
    print("available", flush=True)
    time.sleep(60)
""") % os.path.dirname(os.path.abspath(__file__))


def test_rfc6121_4_5_2_unavailable_when_client_process_is_killed(im):
    befriend(im, "bob", "alice")
    bob = online(im, "bob", "phone")
    p = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, str(im.c2s_port), PW],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "available"
        take(bob, presence(from_="alice@localhost/crashy", type=None))
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
        take(bob, presence(from_="alice@localhost/crashy", type="unavailable"), timeout=5 * SLOW)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        p.stdout.close()
    bob.close()


def test_rfc6121_4_5_2_replaced_session_unavailable_then_new_available(im):
    a, bob, sibling = _alice_seen_by_bob(im)
    # alice logs in again with the same resource: the old stream gets <conflict/>
    a2 = im_login(im.c2s_port, "alice", PW, "desk")
    el = a.expect(STREAMS + "error")
    assert el.find("{urn:ietf:params:xml:ns:xmpp-streams}conflict") is not None
    take(bob, unavailable_from(a))
    a2.send("<presence><status>back</status></presence>")
    p = take(bob, presence(from_="alice@localhost/desk"))
    assert p.get("type") is None and p.findtext(CLIENT + "status") == "back", summary(p)
    # and that is the last word: no stray unavailable afterwards
    sync(a2)
    none_arrives(bob, presence(from_="alice@localhost/desk"), QUIET)
    for c in (a, a2, bob, sibling):
        c.close()


def test_rfc6121_4_5_unavailable_not_sent_for_a_session_never_available(im):
    befriend(im, "bob", "alice")
    bob = online(im, "bob", "phone")
    a = online(im, "alice", "desk", available=False)
    a.send("</stream:stream>")
    a.wait_closed(5)
    none_arrives(bob, presence(from_=a.full_jid), QUIET)
    a.close()
    bob.close()


# -- §4.6 directed presence --------------------------------------------------

def test_rfc6121_4_6_directed_presence_to_non_subscriber_and_unavailable_at_logoff(im):
    a = online(im, "alice", "desk")
    carol = online(im, "carol", "pc")
    # alice sends: <presence to='carol@localhost/pc'><show>chat</show></presence>
    a.send("<presence to='%s'><show>chat</show></presence>" % carol.full_jid)
    p = take(carol, available_from(a))
    assert p.get("to") == carol.full_jid and p.findtext(CLIENT + "show") == "chat"
    # a broadcast update is not directed: carol is not told (§4.6.1)
    a.send("<presence><show>away</show></presence>")
    sync(a)
    none_arrives(carol, presence(from_=a.full_jid, type=None), QUIET)
    # alice goes offline: the server tells carol, whom alice told directly (§4.6.3)
    a.send("</stream:stream>")
    take(carol, unavailable_from(a))
    a.close()
    carol.close()


def test_rfc6121_4_6_directed_presence_to_bare_jid_reaches_all_available_resources(im):
    a = online(im, "alice", "desk")
    c1 = online(im, "carol", "pc")
    c2 = online(im, "carol", "phone")
    a.send("<presence to='carol@localhost'/>")
    for c in (c1, c2):
        take(c, available_from(a))
    a.send("<presence type='unavailable'/>")
    for c in (c1, c2):
        take(c, unavailable_from(a))
    for c in (a, c1, c2):
        c.close()


def test_rfc6121_4_6_directed_unavailable_then_logoff_sends_nothing_more(im):
    a = online(im, "alice", "desk")
    carol = online(im, "carol", "pc")
    a.send("<presence to='%s'/>" % carol.full_jid)
    take(carol, available_from(a))
    a.send("<presence to='%s' type='unavailable'/>" % carol.full_jid)
    take(carol, unavailable_from(a))
    a.send("</stream:stream>")
    a.wait_closed(5)
    none_arrives(carol, presence(from_=a.full_jid), QUIET)
    a.close()
    carol.close()


# -- presence errors ----------------------------------------------------------

def test_rfc6120_10_4_3_presence_to_unknown_domain_returns_remote_server_not_found(im):
    a = online(im, "alice", "desk")
    a.send("<presence to='someone@elsewhere.example' id='p1'/>")
    err = take(a, presence(type="error"))
    assert err.get("from") == "someone@elsewhere.example" and err.get("id") == "p1", summary(err)
    assert stanza_error(err)[1] == "remote-server-not-found", summary(err)
    a.close()


def test_rfc6121_4_7_presence_error_from_contact_delivered_to_sender(im):
    a = online(im, "alice", "desk")
    carol = online(im, "carol", "pc")
    a.send("<presence to='%s' id='d1'/>" % carol.full_jid)
    take(carol, available_from(a))
    carol.send("<presence to='%s' type='error' id='d1'><error type='cancel'>"
               "<not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></presence>"
               % a.full_jid)
    err = take(a, presence(from_=carol.full_jid, type="error"))
    assert stanza_error(err) == ("cancel", "not-acceptable"), summary(err)
    a.close()
    carol.close()


def test_rfc6121_4_6_3_presence_to_nonexistent_local_user_is_ignored(im):
    a = online(im, "alice", "desk")
    a.send("<presence to='ghost@localhost/x'/><presence to='ghost@localhost'/>")
    sync(a)
    # silently ignored: no error, nothing (RFC 6121 §8.5.1 / §8.5.3.2.3)
    none_arrives(a, presence(type="error"), QUIET)
    a.close()


# -- no leaks ----------------------------------------------------------------

def test_rfc6121_4_no_presence_leaks_to_non_subscribers(im):
    befriend(im, "bob", "alice")
    carol = online(im, "carol", "pc")
    bob = online(im, "bob", "phone")
    a = online(im, "alice", "desk")
    a.send("<presence><show>away</show></presence>")
    a.send("<presence type='unavailable'/>")
    a.send("<presence/>")
    a.send("</stream:stream>")
    take(bob, unavailable_from(a))
    # carol, with no subscription, saw none of it, and nothing about bob either
    none_arrives(carol, lambda el: el.tag == CLIENT + "presence"
                 and (el.get("from") or "").split("/")[0] in ("alice@localhost", "bob@localhost"),
                 QUIET)
    for c in (a, bob, carol):
        c.close()
