"""test_sasl2.py - XEP-0388 SASL2 with XEP-0386 Bind2, XEP-0484 FAST tokens,
XEP-0198 inline enable/resume and XEP-0474 downgrade protection, spoken
byte by byte by a raw client.

Each test reads like the conversation: the client sends one
<authenticate/> carrying the mechanism's first message and what it wants
done inline (bind, enable SM and carbons, a token), and one <success/>
comes back with every answer; the stream is not restarted after it.
"""
import base64
import hashlib
import hmac
import os
import time

from rawxmpp import CLIENT, SASL, SASL_CB, STREAMS, RawClient, local, ns

SASL2_NS = "urn:xmpp:sasl:2"
SASL2 = "{%s}" % SASL2_NS
BIND2 = "{urn:xmpp:bind:0}"
FAST = "{urn:xmpp:fast:0}"
SM = "{urn:xmpp:sm:3}"
CARBONS = "{urn:xmpp:carbons:2}"
PW = "sasl2 secret"
UA = "d4565fa7-4d72-4749-b3d3-740edbf87770"


# -- the client side of the conversation ---------------------------------------

def connect(port):
    c = RawClient(port)
    c.features = c.starttls()
    return c


def authenticate(c, mech, initial, inline="", ua=UA):
    ua_xml = ("<user-agent id='%s'><software>rawxmpp</software><device>pytest</device>"
              "</user-agent>" % ua) if ua else ""
    c.send("<authenticate xmlns='%s' mechanism='%s'><initial-response>%s</initial-response>"
           "%s%s</authenticate>" % (SASL2_NS, mech, base64.b64encode(initial).decode(),
                                    ua_xml, inline))


def outcome(c):
    while True:
        el = c.next_element()
        if el.tag in (SASL2 + "success", SASL2 + "failure", SASL2 + "challenge"):
            return el
        assert el.tag != STREAMS + "error", "stream error during SASL2\n" + c.dump()


def scram2(c, user, password, hash_name="sha256", inline="", ua=UA):
    """SCRAM over SASL2; returns (<success/> or <failure/>, server-first attrs).
    On success the server signature in <additional-data/> is checked."""
    mech = {"sha1": "SCRAM-SHA-1", "sha256": "SCRAM-SHA-256"}[hash_name]
    gs2 = b"n,,"
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = "n=%s,r=%s" % (user, nonce)
    authenticate(c, mech, gs2 + first_bare.encode(), inline, ua)
    el = outcome(c)
    if el.tag != SASL2 + "challenge":
        return el, None
    server_first = base64.b64decode(el.text or "")
    attrs = dict(kv.split(b"=", 1) for kv in server_first.split(b","))
    salt, iters = base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
    final_bare = "c=%s,r=%s" % (base64.b64encode(gs2).decode(), attrs[b"r"].decode())
    auth_msg = ("%s,%s,%s" % (first_bare, server_first.decode(), final_bare)).encode()
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    sig = hmac.new(hashlib.new(hash_name, client_key).digest(), auth_msg, hash_name).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    final = "%s,p=%s" % (final_bare, base64.b64encode(proof).decode())
    c.send("<response xmlns='%s'>%s</response>" % (SASL2_NS, base64.b64encode(final.encode()).decode()))
    el = outcome(c)
    if el.tag == SASL2 + "success":
        server_key = hmac.new(salted, b"Server Key", hash_name).digest()
        expect = b"v=" + base64.b64encode(hmac.new(server_key, auth_msg, hash_name).digest())
        assert base64.b64decode(el.findtext(SASL2 + "additional-data")) == expect, \
            "bad server signature\n" + c.dump()
    return el, attrs


def ht_login(c, user, token, inline="", ua=UA):
    """HT-SHA-256-NONE: authcid NUL HMAC(token, "Initiator"); checks the
    server's HMAC(token, "Responder") on success."""
    proof = hmac.new(token.encode(), b"Initiator", "sha256").digest()
    authenticate(c, "HT-SHA-256-NONE", user.encode() + b"\0" + proof, inline, ua)
    el = outcome(c)
    if el.tag == SASL2 + "success":
        responder = hmac.new(token.encode(), b"Responder", "sha256").digest()
        assert base64.b64decode(el.findtext(SASL2 + "additional-data")) == responder, \
            "bad HT responder\n" + c.dump()
    return el


def bind(tag="rawtest", extra=""):
    return "<bind xmlns='urn:xmpp:bind:0'><tag>%s</tag>%s</bind>" % (tag, extra)


SM_ENABLE = "<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
CARBONS_ENABLE = "<enable xmlns='urn:xmpp:carbons:2'/>"
REQUEST_TOKEN = "<request-token xmlns='urn:xmpp:fast:0' mechanism='HT-SHA-256-NONE'/>"


def failure_condition(el):
    assert el.tag == SASL2 + "failure", "expected a SASL2 failure, got %s" % el.tag
    return [local(x.tag) for x in el if ns(x.tag) == SASL[1:-1] and local(x.tag) != "text"]


def bye(c):
    """Close the stream politely: a session with stream management would
    otherwise hibernate, waiting for a resumption that never comes."""
    c.try_send("</stream:stream>")
    c.wait_closed(5)
    c.close()


def ping(c):
    c.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    el = c.expect(CLIENT + "iq")
    assert el.get("type") == "result", c.dump()


def token_login(starling, user, inline=REQUEST_TOKEN + bind()):
    """Password login asking for a token; returns (client, token element)."""
    c = connect(starling.c2s_port)
    el, _ = scram2(c, user, PW, inline=inline)
    assert el.tag == SASL2 + "success", c.dump()
    tok = el.find(FAST + "token")
    assert tok is not None and tok.get("token") and tok.get("expiry"), c.dump()
    return c, tok


# -- the tests ------------------------------------------------------------------

def test_xep0388_features_offer_sasl2_with_bind2_fast_and_sm_inline(starling):
    c = connect(starling.c2s_port)
    auth = c.features.find(SASL2 + "authentication")
    assert auth is not None, c.dump()
    sasl1 = c.mechanisms(c.features)
    assert [m.text for m in auth.findall(SASL2 + "mechanism")] == sasl1
    inline = auth.find(SASL2 + "inline")
    b = inline.find(BIND2 + "bind")
    assert {f.get("var") for f in b.find(BIND2 + "inline")} == {
        "urn:xmpp:carbons:2", "urn:xmpp:csi:0", "urn:xmpp:sm:3"}
    assert [m.text for m in inline.find(FAST + "fast")] == ["HT-SHA-256-NONE"]
    assert inline.find(SM + "sm") is not None
    bye(c)


def test_xep0388_xep0386_scram_sha256_bind2_inline_sm_and_carbons_no_restart(starling):
    starling.adduser("alice", PW)
    starling.adduser("bob", PW)
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", PW, inline=bind("rawtest", SM_ENABLE + CARBONS_ENABLE))
    assert el.tag == SASL2 + "success", c.dump()
    jid = el.findtext(SASL2 + "authorization-identifier")
    assert jid.startswith("alice@localhost/rawtest/") and len(jid) > len("alice@localhost/rawtest/")
    enabled = el.find(BIND2 + "bound/" + SM + "enabled")
    assert enabled is not None and enabled.get("resume") == "true" and enabled.get("id"), c.dump()
    # no stream restart: stanzas flow on this very stream
    ping(c)
    c.send("<r xmlns='urn:xmpp:sm:3'/>")
    assert c.expect(SM + "a").get("h") == "1"
    # carbons were enabled inline: a message sent by another resource is copied here
    other = RawClient(starling.c2s_port)
    other.login("alice", PW, "other")
    other.send("<message to='bob@localhost' type='chat'><body>hi bob</body></message>")
    m = c.expect(CLIENT + "message")
    fwd = m.find(CARBONS + "sent")
    assert fwd is not None, c.dump()
    bye(c)
    bye(other)


def test_xep0386_same_user_agent_gets_the_same_resource(starling):
    starling.adduser("alice", PW)
    jids = []
    for _ in range(2):
        c = connect(starling.c2s_port)
        el, _ = scram2(c, "alice", PW, inline=bind("stable"))
        jids.append(el.findtext(SASL2 + "authorization-identifier"))
        bye(c)
    assert jids[0] == jids[1]
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", PW, inline=bind("stable"), ua="another-device")
    assert el.findtext(SASL2 + "authorization-identifier") != jids[0]
    bye(c)


def test_xep0388_plain_with_bind2(starling):
    starling.adduser("alice", PW)
    c = connect(starling.c2s_port)
    authenticate(c, "PLAIN", b"\0alice\0" + PW.encode(), bind("plain"))
    el = outcome(c)
    assert el.tag == SASL2 + "success", c.dump()
    assert el.findtext(SASL2 + "authorization-identifier").startswith("alice@localhost/plain/")
    assert el.find(BIND2 + "bound") is not None
    ping(c)
    bye(c)


def test_xep0388_without_bind_authorization_identifier_is_bare_then_legacy_bind(starling):
    starling.adduser("alice", PW)
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", PW)
    assert el.findtext(SASL2 + "authorization-identifier") == "alice@localhost"
    c.send("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
           "<resource>legacy</resource></bind></iq>")
    assert c.expect(CLIENT + "iq").get("type") == "result", c.dump()
    bye(c)


def test_xep0388_wrong_password_not_authorized(starling):
    starling.adduser("alice", PW)
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", "wrong", inline=bind())
    assert failure_condition(el) == ["not-authorized"], c.dump()
    c.send("<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'/></iq>")
    c.expect_stream_error("not-authorized")


def test_xep0388_plain_wrong_password_and_unknown_user_look_alike(starling):
    starling.adduser("alice", PW)
    for user in ("alice", "nobody"):
        c = connect(starling.c2s_port)
        authenticate(c, "PLAIN", b"\0" + user.encode() + b"\0nope")
        assert failure_condition(outcome(c)) == ["not-authorized"]
        bye(c)


def expected_ssdp(features, hash_name, sasl2):
    if sasl2:
        mechs = [m.text for m in features.find(SASL2 + "authentication").findall(SASL2 + "mechanism")]
    else:
        mechs = [m.text for m in features.find(SASL + "mechanisms").findall(SASL + "mechanism")]
    s = b"\x1e".join(sorted(m.encode() for m in mechs))
    cb = features.find(SASL_CB + "sasl-channel-binding")
    if cb is not None:
        s += b"\x1f" + b"\x1e".join(sorted(x.get("type").encode() for x in cb))
    return base64.b64encode(hashlib.new(hash_name, s).digest())


def test_xep0474_server_first_carries_downgrade_protection_hash(starling):
    starling.adduser("alice", PW)
    for hash_name in ("sha1", "sha256"):
        # SASL2
        c = connect(starling.c2s_port)
        el, attrs = scram2(c, "alice", PW, hash_name)
        assert el.tag == SASL2 + "success"
        assert attrs[b"h"] == expected_ssdp(c.features, hash_name, True), c.dump()
        bye(c)
        # RFC 6120 SASL: the same lists, the same value
        c = connect(starling.c2s_port)
        mech = {"sha1": "SCRAM-SHA-1", "sha256": "SCRAM-SHA-256"}[hash_name]
        nonce = base64.b64encode(os.urandom(18)).decode()
        c.auth(mech, b"n,,n=alice,r=" + nonce.encode())
        ch = c.expect(SASL + "challenge")
        sf = dict(kv.split(b"=", 1) for kv in base64.b64decode(ch.text).split(b","))
        assert sf[b"h"] == expected_ssdp(c.features, hash_name, False), c.dump()
        bye(c)


def test_xep0474_hash_follows_the_configured_mechanisms(starling_factory):
    s = starling_factory(sasl_mechanisms="SCRAM-SHA-256 SCRAM-SHA-1")
    s.adduser("alice", PW)
    c = connect(s.c2s_port)
    el, attrs = scram2(c, "alice", PW)
    assert el.tag == SASL2 + "success"
    want = base64.b64encode(hashlib.sha256(b"SCRAM-SHA-1\x1eSCRAM-SHA-256").digest())
    assert attrs[b"h"] == want
    bye(c)


def test_xep0484_token_requested_then_token_login(starling):
    starling.adduser("alice", PW)
    c, tok = token_login(starling, "alice")
    assert tok.get("expiry").endswith("Z")
    bye(c)
    c = connect(starling.c2s_port)
    el = ht_login(c, "alice", tok.get("token"),
                  "<fast xmlns='urn:xmpp:fast:0'/>" + bind("fast", SM_ENABLE))
    assert el.tag == SASL2 + "success", c.dump()
    assert el.findtext(SASL2 + "authorization-identifier").startswith("alice@localhost/fast/")
    assert el.find(BIND2 + "bound/" + SM + "enabled") is not None
    ping(c)
    bye(c)
    # the token is not stored in the clear
    with open(os.path.join(starling.dir, "starling.db"), "rb") as f:
        assert tok.get("token").encode() not in f.read()


def test_xep0484_wrong_token_and_other_user_agent_not_authorized(starling):
    starling.adduser("alice", PW)
    c, tok = token_login(starling, "alice")
    bye(c)
    for token, ua in (("not-the-token", UA), (tok.get("token"), "some-other-device")):
        c = connect(starling.c2s_port)
        el = ht_login(c, "alice", token, "<fast xmlns='urn:xmpp:fast:0'/>", ua=ua)
        assert failure_condition(el) == ["not-authorized"], c.dump()
        bye(c)


def test_xep0484_rotation_old_token_valid_until_new_one_used(starling):
    starling.adduser("alice", PW)
    c, tok = token_login(starling, "alice")
    bye(c)
    old = tok.get("token")
    # log in with the token and ask for its successor
    c = connect(starling.c2s_port)
    el = ht_login(c, "alice", old, "<fast xmlns='urn:xmpp:fast:0'/>" + REQUEST_TOKEN)
    assert el.tag == SASL2 + "success"
    new = el.find(FAST + "token").get("token")
    assert new and new != old
    bye(c)
    # the old one still works until the new one has been used once
    for token, ok in ((old, True), (new, True), (old, False), (new, True)):
        c = connect(starling.c2s_port)
        el = ht_login(c, "alice", token, "<fast xmlns='urn:xmpp:fast:0'/>")
        assert (el.tag == SASL2 + "success") == ok, (token == old, c.dump())
        bye(c)


def test_xep0484_count_must_grow(starling):
    starling.adduser("alice", PW)
    c, tok = token_login(starling, "alice")
    bye(c)
    for count, ok in ((5, True), (5, False), (4, False), (6, True)):
        c = connect(starling.c2s_port)
        el = ht_login(c, "alice", tok.get("token"), "<fast xmlns='urn:xmpp:fast:0' count='%d'/>" % count)
        assert (el.tag == SASL2 + "success") == ok, (count, c.dump())
        bye(c)


def test_xep0484_invalidate_ends_the_token(starling):
    starling.adduser("alice", PW)
    c, tok = token_login(starling, "alice")
    bye(c)
    c = connect(starling.c2s_port)
    el = ht_login(c, "alice", tok.get("token"), "<fast xmlns='urn:xmpp:fast:0' invalidate='true'/>")
    assert el.tag == SASL2 + "success"
    bye(c)
    c = connect(starling.c2s_port)
    assert failure_condition(ht_login(c, "alice", tok.get("token"))) == ["not-authorized"]
    bye(c)


def test_xep0484_expired_token_credentials_expired(starling_factory):
    s = starling_factory(fast_token_lifetime=2)
    s.adduser("alice", PW)
    c, tok = token_login(s, "alice")
    bye(c)
    time.sleep(3)
    c = connect(s.c2s_port)
    el = ht_login(c, "alice", tok.get("token"), "<fast xmlns='urn:xmpp:fast:0'/>")
    assert failure_condition(el) == ["credentials-expired"], c.dump()
    bye(c)


def test_xep0484_password_change_ends_tokens(starling):
    starling.adduser("alice", PW)
    c, tok = token_login(starling, "alice")
    bye(c)
    starling.ctl("passwd", "alice@localhost", input="new password\n")
    c = connect(starling.c2s_port)
    assert failure_condition(ht_login(c, "alice", tok.get("token"))) == ["not-authorized"]
    bye(c)


def test_xep0198_sasl2_inline_resume(starling):
    starling.adduser("alice", PW)
    starling.adduser("bob", PW)
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", PW, inline=bind("sm", SM_ENABLE))
    full = el.findtext(SASL2 + "authorization-identifier")
    smid = el.find(BIND2 + "bound/" + SM + "enabled").get("id")
    # cut the TCP connection without a goodbye; bob writes meanwhile
    from test_sm import cut
    cut(c)
    assert starling.wait_log("connection lost, hibernating")
    bob = RawClient(starling.c2s_port)
    bob.login("bob", PW, "b")
    bob.send("<message to='%s' type='chat'><body>while you were away</body></message>" % full)
    time.sleep(0.3)
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", PW,
                   inline="<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>" % smid + bind("sm"))
    assert el.tag == SASL2 + "success", c.dump()
    assert el.find(SM + "resumed") is not None and el.find(BIND2 + "bound") is None, c.dump()
    assert el.findtext(SASL2 + "authorization-identifier") == full
    m = c.expect(CLIENT + "message")
    assert m.findtext(CLIENT + "body") == "while you were away"
    bye(c)
    bye(bob)


def test_xep0198_sasl2_failed_resume_then_binds(starling):
    starling.adduser("alice", PW)
    c = connect(starling.c2s_port)
    el, _ = scram2(c, "alice", PW,
                   inline="<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>" + bind("again"))
    assert el.tag == SASL2 + "success"
    assert el.find(SM + "failed") is not None
    assert el.find(BIND2 + "bound") is not None
    assert el.findtext(SASL2 + "authorization-identifier").startswith("alice@localhost/again/")
    bye(c)
