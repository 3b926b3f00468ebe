"""test_csi.py - XEP-0352 client state indication.

While a client is inactive, presence updates wait and are merged (each
contact's latest one only); a message with a body goes out at once, after
what was held; <active/> flushes everything.
"""
import socket
import time

from rawxmpp import CLIENT, RawClient

PW = "csi pw"


def drain(c, timeout):
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(c.next_element(max(0.05, deadline - time.monotonic())))
        except (socket.timeout, TimeoutError):
            break
        except Exception as e:  # noqa: BLE001 - a timeout from the ssl layer
            if "timed out" in str(e):
                break
            raise
    return got


def test_xep0352_feature_advertised(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    c.plain("alice", PW)
    f = c.open_stream()
    assert f.find("{urn:xmpp:csi:0}csi") is not None
    c.close()


def test_xep0352_burst_of_presence_from_50_contacts_one_update_each_on_active(starling_factory):
    s = starling_factory(max_connections_per_ip=200, connect_rate_per_ip=1000)
    s.adduser("alice@localhost", PW)
    n = 50
    for i in range(n):
        s.adduser("c%d@localhost" % i, PW)
    a = RawClient(s.c2s_port)
    a.login("alice", PW, "phone")
    a.send("<presence/>")
    a.expect(CLIENT + "presence")  # its own presence comes back (RFC 6121 §4.2.2)
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    contacts = []
    for i in range(n):
        c = RawClient(s.c2s_port)
        c.login("c%d" % i, PW, "r")
        contacts.append(c)
    for round_ in range(3):
        for c in contacts:
            c.send("<presence to='alice@localhost/phone'><status>s%d</status></presence>" % round_)
    for c in contacts:
        c.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
        c.expect(CLIENT + "iq")
    # nothing reached the inactive client
    held = [e for e in drain(a, 0.5) if e.tag == CLIENT + "presence"]
    assert held == [], "presence reached an inactive client: %d" % len(held)
    a.send("<active xmlns='urn:xmpp:csi:0'/>")
    got = [e for e in drain(a, 2.0) if e.tag == CLIENT + "presence"]
    senders = [e.get("from") for e in got]
    assert len(senders) == len(set(senders)), "more than one update per contact"
    assert len(set(senders)) == n
    # and it is each contact's latest
    assert all(e.findtext(CLIENT + "status") == "s2" for e in got)
    for c in contacts + [a]:
        c.close()


def test_xep0352_message_with_body_is_urgent_and_flushes_held(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    a = RawClient(starling.c2s_port)
    a.login("alice", PW, "phone")
    a.send("<presence/>")
    a.expect(CLIENT + "presence")
    a.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    b = RawClient(starling.c2s_port)
    b.login("bob", PW, "desk")
    b.send("<presence to='alice@localhost/phone'/>")
    b.send("<message to='alice@localhost/phone' type='chat'><composing "
           "xmlns='http://jabber.org/protocol/chatstates'/></message>")
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    b.expect(CLIENT + "iq")
    assert [e for e in drain(a, 0.4) if e.tag != CLIENT + "iq"] == []
    b.send("<message to='alice@localhost/phone' type='chat'><body>hi</body></message>")
    got = drain(a, 1.0)
    tags = [e.tag for e in got]
    # held presence and chat state first, in order, then the message with a body
    assert tags == [CLIENT + "presence", CLIENT + "message", CLIENT + "message"], tags
    assert got[2].findtext(CLIENT + "body") == "hi"
    a.close()
    b.close()
