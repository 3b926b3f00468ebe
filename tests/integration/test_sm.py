"""test_sm.py - XEP-0198 stream management: acks, resumption, and no loss.

A raw client enables stream management, its TCP connection is cut without a
close in the middle of a conversation, and it resumes with its id: every
message sent meanwhile arrives exactly once. Without resumption the same
messages end up routed again as undelivered (offline storage, once
mod_offline is enabled, keeps them).
"""
import socket
import struct
import time

from rawxmpp import CLIENT, RawClient

SM = "{urn:xmpp:sm:3}"
PW = "sm pw"


def enable(c, resume=True):
    c.send("<enable xmlns='urn:xmpp:sm:3'%s/>" % (" resume='true'" if resume else ""))
    el = c.expect(SM + "enabled")
    return el


def cut(c):
    """Drop the TCP connection at once, no </stream:stream>, no TLS close."""
    raw = c.sock
    try:
        s = raw if isinstance(raw, socket.socket) else raw.sock
    except AttributeError:
        s = raw
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()


class Counter:
    """Counts the stanzas a client received since <enable/>, as its h."""
    def __init__(self):
        self.h = 0


def bodies(c, n, timeout=5, counter=None):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            el = c.next_element(max(0.1, deadline - time.monotonic()))
        except (socket.timeout, TimeoutError):
            break
        if counter is not None and el.tag.startswith(CLIENT):
            counter.h += 1
        if el.tag == CLIENT + "message":
            got.append(el.findtext(CLIENT + "body"))
    return got


def test_xep0198_stream_feature_and_enable(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    c.plain("alice", PW)
    f = c.open_stream()
    assert f.find(SM + "sm") is not None
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>r</resource></bind></iq>")
    c.expect(CLIENT + "iq")
    el = enable(c)
    assert el.get("resume") == "true" and el.get("id") and int(el.get("max")) > 0
    # <r/> is answered with the number of stanzas handled: none yet after enable
    c.send("<r xmlns='urn:xmpp:sm:3'/>")
    assert c.expect(SM + "a").get("h") == "0"
    c.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    c.expect(CLIENT + "iq")
    c.send("<r xmlns='urn:xmpp:sm:3'/>")
    assert c.expect(SM + "a").get("h") == "1"
    c.close()


def test_xep0198_enable_before_bind_fails(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    c.plain("alice", PW)
    c.open_stream()
    c.send("<enable xmlns='urn:xmpp:sm:3'/>")
    assert c.expect(SM + "failed") is not None
    c.close()


def test_xep0198_resume_after_connection_cut_delivers_each_message_once(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    a = RawClient(starling.c2s_port)
    a.login("alice", PW, "phone")
    sm_id = enable(a).get("id")
    seen = Counter()
    b = RawClient(starling.c2s_port)
    b.login("bob", PW, "desk")
    # two messages before the cut: the client acks the first only
    b.send("<message to='alice@localhost/phone' type='chat'><body>m1</body></message>")
    assert bodies(a, 1, counter=seen) == ["m1"]
    a.send("<a xmlns='urn:xmpp:sm:3' h='%d'/>" % seen.h)
    b.send("<message to='alice@localhost/phone' type='chat'><body>m2</body></message>")
    assert bodies(a, 1, counter=seen) == ["m2"]
    cut(a)
    time.sleep(0.3)
    # while the session hibernates
    for i in (3, 4, 5):
        b.send("<message to='alice@localhost/phone' type='chat'><body>m%d</body></message>" % i)
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    b.expect(CLIENT + "iq")
    # resume: we have handled m1 and m2
    a2 = RawClient(starling.c2s_port)
    a2.starttls()
    a2.plain("alice", PW)
    a2.open_stream()
    a2.send("<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%d'/>" % (sm_id, seen.h))
    el = a2.expect(SM + "resumed")
    assert el.get("previd") == sm_id
    got = bodies(a2, 3)
    assert got == ["m3", "m4", "m5"]
    # nothing more (m2 was acknowledged, so it is not sent again)
    a2.send("<r xmlns='urn:xmpp:sm:3'/>")
    el = a2.expect(SM + "a")
    assert el is not None
    a2.close()
    b.close()


def test_xep0198_resume_unknown_id_fails(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    c.plain("alice", PW)
    c.open_stream()
    c.send("<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>")
    el = c.expect(SM + "failed")
    assert el.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    # the stream is still usable: bind normally
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    assert c.expect(CLIENT + "iq").get("type") == "result"
    c.close()


def test_xep0198_ack_of_more_than_sent_is_a_stream_error(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.login("alice", PW)
    enable(c)
    c.send("<a xmlns='urn:xmpp:sm:3' h='5'/>")
    c.expect_stream_error("undefined-condition")


def test_xep0198_presence_stays_while_hibernating_then_unavailable(starling_factory):
    s = starling_factory(sm_resume_timeout=2)
    s.adduser("alice@localhost", PW)
    s.adduser("bob@localhost", PW)
    a = RawClient(s.c2s_port)
    a.login("alice", PW, "phone")
    enable(a)
    a.send("<presence/>")
    time.sleep(0.2)
    assert "alice@localhost/phone" in s.ctl("sessions").stdout
    cut(a)
    time.sleep(0.5)
    # still there, hibernating
    assert "alice@localhost/phone" in s.ctl("sessions").stdout
    time.sleep(2.5)
    assert "alice@localhost/phone" not in s.ctl("sessions").stdout


def test_xep0198_unacked_messages_of_an_expired_session_go_to_offline_storage(starling_factory):
    s = starling_factory(sm_resume_timeout=1)
    s.adduser("alice@localhost", PW)
    s.adduser("bob@localhost", PW)
    a = RawClient(s.c2s_port)
    a.login("alice", PW, "phone")
    enable(a)
    a.send("<presence/>")
    b = RawClient(s.c2s_port)
    b.login("bob", PW, "desk")
    b.send("<message to='alice@localhost' type='chat'><body>before</body></message>")
    assert bodies(a, 1) == ["before"]  # received, never acknowledged
    cut(a)
    time.sleep(0.3)
    for i in (1, 2):
        b.send("<message to='alice@localhost' type='chat'><body>during%d</body></message>" % i)
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    b.expect(CLIENT + "iq")
    time.sleep(2.0)  # the window closes: the session ends
    a2 = RawClient(s.c2s_port)
    a2.login("alice", PW, "laptop")
    a2.send("<presence/>")
    got = bodies(a2, 3)
    # none lost: the unacknowledged one and the two sent meanwhile, once each
    assert sorted(got) == ["before", "during1", "during2"], got
    assert bodies(a2, 1, timeout=0.5) == []
    a2.close()
    b.close()
