"""test_c2s_rules.py - binding, session, unsupported elements, idle pings,
registration rate limits and the read-rate limit, with a raw client.

Each test reads like the protocol exchange it checks (RFC 6120 §7, §4.9.3,
XEP-0199 §4.2, XEP-0077 §3) and names the requirement it proves.
"""
import time

from rawxmpp import BIND, CLIENT, RawClient, stanza_error
from slixclient import can_login, run

PW = "rules pw"
PING = "{urn:xmpp:ping}ping"
REG = "jabber:iq:register"


def logged_in(server, user="alice", resource="raw", **kw):
    c = RawClient(server.c2s_port, **kw)
    jid = c.login(user, PW, resource)
    return c, jid


def test_rfc6120_7_6_server_generates_resource_when_none_given(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    assert c.plain("alice", PW).tag.endswith("success")
    f = c.open_stream()
    assert f.find(BIND + "bind") is not None
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    el = c.expect(CLIENT + "iq")
    assert el.get("type") == "result" and el.get("id") == "b"
    jid = el.find(BIND + "bind/" + BIND + "jid").text
    assert jid.startswith("alice@localhost/") and len(jid) > len("alice@localhost/")
    c.close()


def test_rfc6120_7_7_2_1_invalid_resource_bad_request(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    c.plain("alice", PW)
    c.open_stream()
    # U+E000 (private use) is valid XML but prohibited by Resourceprep (RFC 3920 B.1)
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>bad&#xE000;</resource></bind></iq>")
    el = c.expect(CLIENT + "iq")
    assert el.get("id") == "b" and stanza_error(el) == ("modify", "bad-request")
    # the stream stays usable: bind a valid resource
    c.send("<iq type='set' id='c'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>good</resource></bind></iq>")
    el = c.expect(CLIENT + "iq")
    assert el.get("type") == "result"
    c.close()


def test_rfc6121_legacy_session_feature_advertised_optional_and_answered(starling):
    starling.adduser("alice@localhost", PW)
    c = RawClient(starling.c2s_port)
    c.starttls()
    c.plain("alice", PW)
    f = c.open_stream()
    sess = f.find("{urn:ietf:params:xml:ns:xmpp-session}session")
    assert sess is not None and sess.find("{urn:ietf:params:xml:ns:xmpp-session}optional") is not None
    c.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>r</resource></bind></iq>")
    c.expect(CLIENT + "iq")
    c.send("<iq type='set' id='s'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    el = c.expect(CLIENT + "iq")
    assert el.get("type") == "result" and el.get("id") == "s"
    c.close()


def test_rfc6120_4_9_3_24_unsupported_stanza_type(starling):
    starling.adduser("alice@localhost", PW)
    c, _ = logged_in(starling)
    c.send("<foo xmlns='jabber:client'/>")
    c.expect_stream_error("unsupported-stanza-type")
    assert run(can_login(starling, "alice@localhost", PW))


def test_rfc6120_8_2_3_iq_with_two_payloads_bad_request(starling):
    starling.adduser("alice@localhost", PW)
    c, _ = logged_in(starling)
    c.send("<iq type='get' id='two' to='localhost'><ping xmlns='urn:xmpp:ping'/>"
           "<ping xmlns='urn:xmpp:ping'/></iq>")
    el = c.expect(CLIENT + "iq")
    assert el.get("id") == "two" and stanza_error(el) == ("modify", "bad-request")
    c.close()


def test_rfc6120_8_2_3_iq_result_to_server_not_answered(starling):
    starling.adduser("alice@localhost", PW)
    c, _ = logged_in(starling)
    c.send("<iq type='result' id='stray' to='localhost'/>")
    c.send("<iq type='error' id='stray2' to='localhost'/>")
    c.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    el = c.expect(CLIENT + "iq")
    # the first answer is the ping's: results and errors get none
    assert el.get("id") == "after" and el.get("type") == "result"
    c.close()


def test_rfc6120_8_1_1_1_message_to_full_jid_of_gone_resource_treated_as_bare(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    a, ajid = logged_in(starling, "alice", "desk")
    b, _ = logged_in(starling, "bob", "phone")
    a.send("<presence/>")
    time.sleep(0.2)
    b.send("<message to='alice@localhost/gone' type='chat' id='m1'><body>hi</body></message>")
    el = a.expect(CLIENT + "message")
    assert el.findtext(CLIENT + "body") == "hi"
    assert el.get("from") == "bob@localhost/phone"
    a.close()
    b.close()


def test_rfc6121_8_5_2_1_1_bare_jid_goes_to_highest_priority(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    hi, _ = logged_in(starling, "alice", "hi")
    lo, _ = logged_in(starling, "alice", "lo")
    neg, _ = logged_in(starling, "alice", "neg")
    hi.send("<presence><priority>5</priority></presence>")
    lo.send("<presence><priority>1</priority></presence>")
    neg.send("<presence><priority>-1</priority></presence>")
    time.sleep(0.2)
    b, _ = logged_in(starling, "bob")
    b.send("<message to='alice@localhost' type='chat'><body>one</body></message>")
    assert hi.expect(CLIENT + "message").findtext(CLIENT + "body") == "one"
    for other in (lo, neg):
        try:
            el = other.next_element(0.5)
            assert el.tag != CLIENT + "message", "lower priority resource got the message"
        except Exception as e:  # timeout: nothing arrived, as it should
            assert "timed out" in str(e) or type(e).__name__ in ("timeout", "TimeoutError")
    for c in (hi, lo, neg, b):
        c.close()


def test_xep0199_4_2_idle_client_pinged_then_timed_out(starling_factory):
    s = starling_factory(idle_timeout=5, ping_timeout=1)
    s.adduser("alice@localhost", PW)
    c, jid = logged_in(s)
    # silence: the server asks whether we are still there
    el = c.expect(CLIENT + "iq", timeout=10)
    assert el.get("type") == "get" and el.find(PING) is not None
    assert el.get("to") == jid and el.get("from") == "localhost"
    # answering keeps the session
    c.send("<iq type='result' id='%s' to='localhost'/>" % el.get("id"))
    el = c.expect(CLIENT + "iq", timeout=10)
    assert el.find(PING) is not None
    # not answering ends it
    c.expect_stream_error("connection-timeout", timeout=5)


def test_xep0077_registration_rate_limited_per_address(starling_factory):
    s = starling_factory(host={"register.allow": "true", "register.limit": "2",
                               "register.window": "1h"})
    results = []
    for i in range(3):
        c = RawClient(s.c2s_port)
        f = c.starttls()
        assert f.find("{http://jabber.org/features/iq-register}register") is not None
        c.send("<iq type='set' id='r%d'><query xmlns='%s'><username>user%d</username>"
               "<password>pw%d</password></query></iq>" % (i, REG, i, i))
        el = c.expect(CLIENT + "iq", timeout=10)
        results.append(el.get("type") if el.get("type") == "result" else stanza_error(el))
        c.close()
    assert results[:2] == ["result", "result"]
    assert results[2] == ("wait", "resource-constraint")
    assert run(can_login(s, "user1@localhost", "pw1"))


def test_rfc6120_13_9_read_rate_limit_throttles_a_flooding_client(starling_factory):
    # 16 KiB/s with a 16 KiB bucket: 96 KiB of input takes about 5 s to be read.
    s = starling_factory(c2s_rate="16k", c2s_burst="16k")
    s.adduser("alice@localhost", PW)
    c, jid = logged_in(s)
    filler = "<message to='%s' type='headline'><body>%s</body></message>" % (jid, "x" * 900)
    t0 = time.monotonic()
    for _ in range(96):
        c.send(filler)
    c.send("<iq type='get' id='last' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    deadline = time.monotonic() + 30
    while True:
        el = c.next_element(max(0.1, deadline - time.monotonic()))
        if el.tag == CLIENT + "iq" and el.get("id") == "last":
            break
    elapsed = time.monotonic() - t0
    assert elapsed >= 3.0, "flood was read at %.0f KiB/s, over the 16 KiB/s limit" % (96 / elapsed)
    # the throttled client is still connected and served
    c.close()
    assert run(can_login(s, "alice@localhost", PW, resource="fresh"))


def test_idle_connection_parser_released_and_rebuilt_with_stream_namespaces(starling):
    """An idle connection gives back its XML parser's memory (the server's
    sweep, after 5 s without input) and rebuilds it from the stream header
    when input comes again: a prefix declared only on the header, and the
    header's own prefix for the stream namespace, still work afterwards."""
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    bob, bob_jid = logged_in(starling, "bob")
    c = RawClient(starling.c2s_port)
    c.starttls()
    assert c.plain("alice", PW).tag.endswith("success")
    c.open_stream(extra=" xmlns:e='urn:example:ext'")
    c.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>idle</resource></bind></iq>")
    assert c.expect(CLIENT + "iq").get("type") == "result"

    def rested():
        out = starling.ctl("status").stdout
        return int(out.split("parsers_rested ")[1].split()[0])

    before = rested()
    deadline = time.time() + 20
    while rested() < before + 2 and time.time() < deadline:  # both clients quiet
        time.sleep(0.5)
    assert rested() >= before + 2, starling.ctl("status").stdout
    c.send("<message to='%s' type='chat' id='m1'><body>after the rest</body>"
           "<e:x e:a='1'/></message>" % bob_jid)
    el = bob.expect(CLIENT + "message", timeout=5)
    assert el.findtext(CLIENT + "body") == "after the rest"
    x = el.find("{urn:example:ext}x")
    assert x is not None and x.get("{urn:example:ext}a") == "1"
    # and the stream closes as it was opened (same qualified name)
    c.send("</stream:stream>")
    c.wait_closed(timeout=5)
    assert c.stream_closed
