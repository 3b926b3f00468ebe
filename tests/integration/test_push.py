"""test_push.py - XEP-0357 Push Notifications against the real daemon.

There is no s2s yet, so the app server (the XMPP Push Service) is a local
account, pusher@localhost/app, whose raw client receives the pubsub publish
and answers it by hand: a result, or an error to see the registration
disabled. Each test reads like the conversation: alice enables push, goes
away (offline, or her stream-managed session hibernates after a TCP cut),
bob writes, the pusher receives.
"""
import time

import pytest

from rawxmpp import CLIENT, RawClient, iq, im_login, none_arrives, stanza_error, summary, sync, take
from test_sm import cut, enable as sm_enable

PW = "push pw"
APP = "pusher@localhost/app"
PUSH_NS = "urn:xmpp:push:0"
PUSH = "{%s}" % PUSH_NS
PUBSUB = "{http://jabber.org/protocol/pubsub}"
XDATA = "{jabber:x:data}"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
SECRET_FORM = ("<x xmlns='jabber:x:data' type='submit'>"
               "<field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options"
               "</value></field><field var='secret'><value>%s</value></field></x>")


def make_server(starling_factory, **host):
    opts = {"push.min_interval": "0"}
    opts.update(host)
    s = starling_factory(host=opts)
    for u in ("alice", "bob", "pusher"):
        s.adduser(u + "@localhost", PW)
    return s


@pytest.fixture
def server(starling_factory):
    return make_server(starling_factory)


def login(server, user, resource="raw", available=False):
    c = im_login(server.c2s_port, user, PW, resource)
    if available:
        c.send("<presence/>")
        sync(c)
    return c


def enable(c, node="node1", jid=APP, form=""):
    return iq(c, "set", "<enable xmlns='%s' jid='%s' node='%s'>%s</enable>"
              % (PUSH_NS, jid, node, form))


def disable(c, jid=APP, node=None):
    return iq(c, "set", "<disable xmlns='%s' jid='%s'%s/>"
              % (PUSH_NS, jid, " node='%s'" % node if node else ""))


def is_publish(el):
    return (el.tag == CLIENT + "iq" and el.get("type") == "set"
            and el.find(PUBSUB + "pubsub/" + PUBSUB + "publish") is not None)


def next_publish(pusher, timeout=5):
    return take(pusher, is_publish, timeout, "a pubsub publish")


def answer(pusher, el, error=None, etype="cancel"):
    """Answer a publish with a result, or with an error condition."""
    if error is None:
        pusher.send("<iq type='result' id='%s' to='%s'/>" % (el.get("id"), el.get("from")))
    else:
        pusher.send("<iq type='error' id='%s' to='%s'><error type='%s'><%s xmlns="
                    "'urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
                    % (el.get("id"), el.get("from"), etype, error))
    sync(pusher)


def summary_form(el):
    """{var: value} of the urn:xmpp:push:summary form in a publish."""
    x = el.find(PUBSUB + "pubsub/" + PUBSUB + "publish/" + PUBSUB + "item/" + PUSH
                + "notification/" + XDATA + "x")
    assert x is not None, summary(el)
    return {f.get("var"): f.findtext(XDATA + "value") for f in x.findall(XDATA + "field")}


def publish_options(el):
    x = el.find(PUBSUB + "pubsub/" + PUBSUB + "publish-options/" + XDATA + "x")
    if x is None:
        return None
    return {f.get("var"): f.findtext(XDATA + "value") for f in x.findall(XDATA + "field")}


def say(bob, text, to="alice@localhost"):
    bob.send("<message to='%s' type='chat'><body>%s</body></message>" % (to, text))
    sync(bob)


def leave(c):
    """Close the stream politely: the session ends, no hibernation."""
    c.send("</stream:stream>")
    c.wait_closed(5)
    c.close()


def hibernate(server, resource="phone", form=""):
    """alice/resource, available, with resumable stream management and push
    enabled, then her TCP connection is cut. Returns the SM id."""
    a = login(server, "alice", resource, available=True)
    sm_id = sm_enable(a).get("id")
    assert enable(a, form=form).get("type") == "result"
    since = server.log_size()
    cut(a)
    assert server.wait_log(r"alice@localhost/%s: connection lost, hibernating" % resource,
                           since=since)
    return sm_id


def login_resume(server, sm_id):
    a = RawClient(server.c2s_port)
    a.starttls()
    a.plain("alice", PW)
    a.open_stream()
    a.send("<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>" % sm_id)
    a.expect("{urn:xmpp:sm:3}resumed")
    return a


def end_hibernation(server, sm_id):
    """Resume and close politely, so no session outlives the test."""
    leave(login_resume(server, sm_id))


# ---- discovery, enable, disable ----------------------------------------------

def test_xep0357_4_1_account_advertises_push(server):
    a = login(server, "alice")
    el = iq(a, "get", "<query xmlns='%s'/>" % DISCO_INFO, to="alice@localhost")
    assert el.get("type") == "result", summary(el)
    feats = [f.get("var") for f in el.iter("{%s}feature" % DISCO_INFO)]
    assert PUSH_NS in feats


def test_xep0357_5_enable_and_6_disable_answered_with_result(server):
    a = login(server, "alice")
    assert enable(a).get("type") == "result"
    assert enable(a, form=SECRET_FORM % "s1").get("type") == "result"  # again: options replaced
    assert disable(a, node="node1").get("type") == "result"
    assert disable(a).get("type") == "result"  # nothing left: still fine


def test_xep0357_5_enable_without_jid_or_node_or_with_wrong_form_is_bad_request(server):
    a = login(server, "alice")
    el = iq(a, "set", "<enable xmlns='%s' node='n'/>" % PUSH_NS)
    assert stanza_error(el) == ("modify", "bad-request")
    el = iq(a, "set", "<enable xmlns='%s' jid='%s'/>" % (PUSH_NS, APP))
    assert stanza_error(el) == ("modify", "bad-request")
    el = enable(a, form="<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'>"
                        "<value>urn:example:other</value></field></x>")
    assert stanza_error(el) == ("modify", "bad-request")
    el = enable(a, jid="a@b@c")
    assert stanza_error(el)[1] == "jid-malformed"
    el = iq(a, "set", "<disable xmlns='%s'/>" % PUSH_NS)
    assert stanza_error(el) == ("modify", "bad-request")


def test_xep0357_5_enable_for_another_account_is_not_ours(server):
    a = login(server, "alice")
    el = iq(a, "set", "<enable xmlns='%s' jid='%s' node='n'/>" % (PUSH_NS, APP),
            to="bob@localhost")
    assert stanza_error(el) is not None


# ---- publishing ----------------------------------------------------------------

def test_xep0357_7_offline_user_gets_a_notification_with_the_summary(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    say(bob, "wherefore art thou")
    el = next_publish(pusher)
    assert el.get("from") == "alice@localhost"  # the user publishes (XEP-0357 §3.2)
    assert el.find(PUBSUB + "pubsub/" + PUBSUB + "publish").get("node") == "node1"
    form = summary_form(el)
    assert form["FORM_TYPE"] == "urn:xmpp:push:summary"
    assert form["message-count"] == "1"
    assert form["last-message-sender"] == "bob@localhost/desk"
    assert "last-message-body" not in form  # push.include_body defaults to false (privacy)
    assert publish_options(el) is None
    answer(pusher, el)
    # the message itself waits in offline storage
    a = login(server, "alice", "phone")
    a.send("<presence/>")
    msg = take(a, lambda e: e.tag == CLIENT + "message")
    assert msg.findtext(CLIENT + "body") == "wherefore art thou"


def test_xep0357_7_hibernated_session_gets_a_notification(server):
    pusher = login(server, "pusher", "app")
    bob = login(server, "bob", "desk")
    sm_id = hibernate(server)
    say(bob, "are you there", to="alice@localhost")
    el = next_publish(pusher)
    form = summary_form(el)
    assert form["message-count"] == "1" and form["last-message-sender"] == "bob@localhost/desk"
    answer(pusher, el)
    say(bob, "to the full jid", to="alice@localhost/phone")
    answer(pusher, next_publish(pusher))
    # the messages went to the session's queue, not to offline storage: a
    # resume replays them
    a = login_resume(server, sm_id)
    got = []
    deadline = time.monotonic() + 5
    while len(got) < 2 and time.monotonic() < deadline:
        e = take(a, lambda e: e.tag == CLIENT + "message", deadline - time.monotonic())
        got.append(e.findtext(CLIENT + "body"))
    assert got == ["are you there", "to the full jid"]
    # back online: no more pushes
    say(bob, "welcome back")
    none_arrives(pusher, is_publish, 0.7)
    leave(a)


def test_xep0357_7_no_notification_while_the_session_is_live(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone", available=True)
    sm_enable(a)
    assert enable(a).get("type") == "result"
    bob = login(server, "bob", "desk")
    say(bob, "hello")
    say(bob, "hello again", to="alice@localhost/phone")
    take(a, lambda e: e.tag == CLIENT + "message")
    none_arrives(pusher, is_publish, 0.7)
    leave(a)


def test_xep0357_7_other_live_session_does_not_push_for_a_hibernated_one_it_is_not(server):
    """A live session that did not enable push never pushes; only the
    hibernated session that did stands in for its device."""
    pusher = login(server, "pusher", "app")
    desk = login(server, "alice", "desk", available=True)
    assert enable(desk, node="desk-node").get("type") == "result"
    sm_id = hibernate(server, "phone")
    bob = login(server, "bob", "desk")
    say(bob, "both get this")
    el = next_publish(pusher)
    assert el.find(PUBSUB + "pubsub/" + PUBSUB + "publish").get("node") == "node1"
    answer(pusher, el)
    none_arrives(pusher, is_publish, 0.5)
    take(desk, lambda e: e.tag == CLIENT + "message")
    end_hibernation(server, sm_id)


def test_xep0357_5_publish_options_are_carried(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a, form=SECRET_FORM % "old").get("type") == "result"
    assert enable(a, form=SECRET_FORM % "eruio234vzxc2kla-91").get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    say(bob, "secret")
    el = next_publish(pusher)
    opts = publish_options(el)
    assert opts == {"FORM_TYPE": "http://jabber.org/protocol/pubsub#publish-options",
                    "secret": "eruio234vzxc2kla-91"}  # the last enable wins
    answer(pusher, el)
    none_arrives(pusher, is_publish, 0.5)  # one registration, one publish


def test_xep0357_hibernated_session_publish_options_are_carried(server):
    pusher = login(server, "pusher", "app")
    sm_id = hibernate(server, form=SECRET_FORM % "s3")
    bob = login(server, "bob", "desk")
    say(bob, "x")
    el = next_publish(pusher)
    assert publish_options(el)["secret"] == "s3"
    answer(pusher, el)
    end_hibernation(server, sm_id)


def test_xep0357_6_disabled_service_gets_nothing(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a, node="n1").get("type") == "result"
    assert enable(a, node="n2").get("type") == "result"
    assert disable(a).get("type") == "result"  # no node: every node of the service
    leave(a)
    bob = login(server, "bob", "desk")
    say(bob, "anyone?")
    none_arrives(pusher, is_publish, 0.7)


def test_xep0357_6_disable_one_node_keeps_the_other(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a, node="n1").get("type") == "result"
    assert enable(a, node="n2").get("type") == "result"
    assert disable(a, node="n1").get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    say(bob, "one node")
    el = next_publish(pusher)
    assert el.find(PUBSUB + "pubsub/" + PUBSUB + "publish").get("node") == "n2"
    answer(pusher, el)
    none_arrives(pusher, is_publish, 0.5)


def test_xep0357_7_1_error_from_the_app_server_disables_the_registration(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    since = server.log_size()
    say(bob, "one")
    answer(pusher, next_publish(pusher), error="item-not-found")
    assert server.wait_log(r"push disabled for pusher@localhost/app node node1", since=since)
    say(bob, "two")
    none_arrives(pusher, is_publish, 0.7)


def test_xep0357_7_1_error_disables_a_hibernated_sessions_registration(server):
    pusher = login(server, "pusher", "app")
    sm_id = hibernate(server)
    bob = login(server, "bob", "desk")
    since = server.log_size()
    say(bob, "one")
    answer(pusher, next_publish(pusher), error="forbidden", etype="auth")
    assert server.wait_log(r"push disabled for pusher@localhost/app", since=since)
    say(bob, "two")
    none_arrives(pusher, is_publish, 0.7)
    end_hibernation(server, sm_id)


def test_xep0357_7_1_transient_error_keeps_the_registration(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    say(bob, "one")
    answer(pusher, next_publish(pusher), error="resource-constraint", etype="wait")
    say(bob, "two")
    answer(pusher, next_publish(pusher))


def test_xep0357_unreachable_app_server_disables_the_registration(server):
    """An app server on a domain we cannot reach answers (through us)
    remote-server-not-found at once: the registration goes."""
    a = login(server, "alice", "phone")
    assert enable(a, jid="push.example.net").get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    since = server.log_size()
    say(bob, "one")
    assert server.wait_log(r"push disabled for push\.example\.net", since=since)


def test_xep0357_include_body_option_sends_the_body(starling_factory):
    server = make_server(starling_factory, **{"push.include_body": "true"})
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    say(bob, "Wherefore art thou, Romeo?")
    el = next_publish(pusher)
    assert summary_form(el)["last-message-body"] == "Wherefore art thou, Romeo?"
    answer(pusher, el)


def test_xep0357_no_push_for_messages_without_body(server):
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    bob.send("<message to='alice@localhost' type='chat'>"
             "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
    bob.send("<message to='alice@localhost' type='headline'><body>news</body></message>")
    sync(bob)
    none_arrives(pusher, is_publish, 0.7)


def test_xep0357_rate_limit_sums_a_burst_into_one_trailing_notification(starling_factory):
    server = make_server(starling_factory, **{"push.min_interval": "2s"})
    pusher = login(server, "pusher", "app")
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    bob = login(server, "bob", "desk")
    t0 = time.monotonic()
    for i in range(4):
        say(bob, "m%d" % i)
    first = next_publish(pusher)
    assert summary_form(first)["message-count"] == "1"
    answer(pusher, first)
    # the other three wait for the end of the cooldown, then come as one
    none_arrives(pusher, is_publish, 1.0)
    second = next_publish(pusher, timeout=5)
    assert time.monotonic() - t0 >= 1.8
    assert summary_form(second)["message-count"] == "3"
    answer(pusher, second)
    none_arrives(pusher, is_publish, 2.5)


def test_xep0357_registration_survives_a_restart(starling_factory):
    server = make_server(starling_factory)
    a = login(server, "alice", "phone")
    assert enable(a).get("type") == "result"
    leave(a)
    assert server.stop() == []
    server.start()
    pusher = login(server, "pusher", "app")
    bob = login(server, "bob", "desk")
    say(bob, "after restart")
    answer(pusher, next_publish(pusher))


def test_xep0357_expired_hibernation_does_not_push_twice(starling_factory):
    """When the resumption window ends, what the session never acknowledged
    goes to offline storage; it was pushed already, so that is quiet. A new
    message for the now offline user pushes again."""
    server = starling_factory(host={"push.min_interval": "0"}, sm_resume_timeout="1s")
    for u in ("alice", "bob", "pusher"):
        server.adduser(u + "@localhost", PW)
    pusher = login(server, "pusher", "app")
    hibernate(server)
    bob = login(server, "bob", "desk")
    say(bob, "while hibernating")
    answer(pusher, next_publish(pusher))
    assert server.wait_log(r"alice@localhost/phone: resumption window over")
    none_arrives(pusher, is_publish, 0.7)
    say(bob, "while offline")
    el = next_publish(pusher)
    assert summary_form(el)["message-count"] == "1"
    answer(pusher, el)
    # both messages wait in offline storage
    a = login(server, "alice", "phone")
    a.send("<presence/>")
    got = [take(a, lambda e: e.tag == CLIENT + "message").findtext(CLIENT + "body")
           for _ in range(2)]
    assert got == ["while hibernating", "while offline"]
    leave(a)
