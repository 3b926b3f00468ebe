"""test_stream_errors.py - what the server does when the peer misbehaves.

A raw socket client (rawxmpp.py) sends what no library would: wrong
passwords, stanzas before authentication, broken XML, DOCTYPEs and entity
bombs, oversized stanzas, wrong hosts and namespaces. Each test checks the
defined SASL failure or stream error (RFC 6120 4.9, 6.5, 11.1), that the
connection is closed, and that the daemon still serves a fresh slixmpp
client afterwards. It also checks the stream features (XEP-0478 limits,
XEP-0440 channel-binding types), shutdown, keepalives and timeouts, and that
a TLS 1.3 session ticket resumes the next connection, and that a stream
the client opens right behind its TLS Finished is answered however fast the
client was.
"""
import hashlib
import signal
import socket
import time

import pytest

from conftest import RSS_SLACK_KIB, preload_env
from rawxmpp import CLIENT, LIMITS, SASL, SASL_CB, STREAMS, TLS, Closed, RawClient, local
from slixclient import can_login, run

PW = "s3cret pass"


@pytest.fixture
def server(starling):
    starling.adduser("alice@localhost", PW)
    starling.adduser("bob@localhost", PW)
    return starling


def still_serves(server):
    """After the misbehaving peer, a fresh slixmpp client still logs in."""
    assert server.alive(), "starlingd died"
    assert run(can_login(server, "bob@localhost", PW, mech="SCRAM-SHA-256")), \
        "a fresh client could not log in afterwards"


def plain_stream(server):
    c = RawClient(server.c2s_port)
    c.open_stream()
    return c


def tls_stream(server):
    c = RawClient(server.c2s_port)
    c.starttls()
    return c


# -- SASL (RFC 6120 6) ---------------------------------------------------------

def test_rfc6120_6_5_10_wrong_password_not_authorized(server):
    c = tls_stream(server)
    el = c.plain("alice", "wrong")
    assert el.tag == SASL + "failure"
    assert [local(x.tag) for x in el if local(x.tag) != "text"] == ["not-authorized"]
    el = c.scram("alice", "wrong", "sha256")
    assert el.tag == SASL + "failure"
    assert el.find(SASL + "not-authorized") is not None, c.dump()
    c.close()
    still_serves(server)


def test_rfc6120_6_5_10_unknown_user_not_authorized_like_wrong_password(server):
    # The same answer for a missing account as for a wrong password, and a
    # SCRAM challenge all the same (no account enumeration).
    c = tls_stream(server)
    el = c.scram("nosuchuser", "whatever", "sha1")
    assert el.tag == SASL + "failure", c.dump()
    assert el.find(SASL + "not-authorized") is not None, c.dump()
    assert "challenge" in c.dump(), "no SCRAM challenge for an unknown user"
    c.close()
    still_serves(server)


def test_rfc6120_6_4_5_retry_after_failure_then_success(server):
    c = tls_stream(server)
    assert c.plain("alice", "wrong").tag == SASL + "failure"
    assert c.scram("alice", PW, "sha256").tag == SASL + "success"
    assert c.bind("retry") == "alice@localhost/retry"
    c.close()


def test_rfc6120_6_4_5_stream_closed_after_sasl_max_failures(starling_factory):
    server = starling_factory(sasl_max_failures=3)
    server.adduser("alice@localhost", PW)
    server.adduser("bob@localhost", PW)
    c = tls_stream(server)
    for attempt in (1, 2):
        assert c.plain("alice", "wrong %d" % attempt).tag == SASL + "failure"
        assert c.poll(), "closed after only %d failures" % attempt
    c.auth("PLAIN", b"\0alice\0wrong 3")
    try:
        el = c.next_element()
        assert el.tag in (SASL + "failure", STREAMS + "error"), c.dump()
    except Closed:
        pass
    assert c.wait_closed(5), "stream still open after 3 SASL failures\n" + c.dump()
    still_serves(server)


def test_rfc6120_6_4_2_plain_refused_without_tls(server):
    # 5.3.1 / 6.4.2: with require_encryption the first features are STARTTLS
    # (required) and no PLAIN is offered in the clear.
    c = RawClient(server.c2s_port)
    f = c.open_stream()
    st = f.find(TLS + "starttls")
    assert st is not None and st.find(TLS + "required") is not None, c.dump()
    assert "PLAIN" not in c.mechanisms(f)
    c.close()


# -- channel binding (RFC 5802, RFC 9266, XEP-0440) ------------------------------

def test_xep0440_sasl_channel_binding_types_advertised(server):
    c = RawClient(server.c2s_port)
    f = c.starttls()
    mechs = c.mechanisms(f)
    for m in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256-PLUS", "PLAIN"):
        assert m in mechs, "%s not offered over TLS: %s" % (m, mechs)
    cb = f.find(SASL_CB + "sasl-channel-binding")
    assert cb is not None, "no XEP-0440 <sasl-channel-binding/>\n" + c.dump()
    types = [x.get("type") for x in cb.findall(SASL_CB + "channel-binding")]
    assert "tls-exporter" in types or "tls-server-end-point" in types, types
    c.close()


def _cb_client(server):
    pytest.importorskip("OpenSSL", reason="python3-openssl is needed for tls-exporter")
    c = RawClient(server.tls_port, direct_tls=True, tls_backend="pyopenssl")
    f = c.open_stream()
    cb = f.find(SASL_CB + "sasl-channel-binding")
    types = [x.get("type") for x in cb.findall(SASL_CB + "channel-binding")] if cb is not None else []
    return c, f, types


def _cb_data(c, cb_type):
    if cb_type == "tls-exporter":
        return c.sock.exporter(b"EXPORTER-Channel-Binding", 32)
    if cb_type == "tls-server-end-point":  # RFC 5929 4.1: SHA-256 for SHA-1/SHA-256 certs
        return hashlib.sha256(c.sock.peer_cert_der()).digest()
    raise AssertionError(cb_type)


@pytest.mark.parametrize("hash_name", ["sha256", "sha1"])
def test_rfc9266_scram_plus_with_channel_binding_logs_in(server, hash_name):
    c, f, types = _cb_client(server)
    usable = [t for t in ("tls-exporter", "tls-server-end-point") if t in types]
    assert usable, "no channel binding type we can compute in %s" % types
    el = c.scram("alice", PW, hash_name, cb_type=usable[0], cb_data=_cb_data(c, usable[0]))
    assert el.tag == SASL + "success", c.dump()
    assert c.bind("plus") == "alice@localhost/plus"
    c.close()


def test_rfc5802_6_scram_plus_wrong_binding_data_not_authorized(server):
    c, f, types = _cb_client(server)
    cb_type = "tls-exporter" if "tls-exporter" in types else "tls-server-end-point"
    el = c.scram("alice", PW, "sha256", cb_type=cb_type, cb_data=b"\0" * 32)
    assert el.tag == SASL + "failure", c.dump()
    c.close()
    still_serves(server)


def test_rfc5802_6_y_flag_while_plus_offered_is_a_downgrade_with_sasl_cb_strict(starling_factory):
    # "y" = "I support binding but think you don't"; the server does, so
    # RFC 5802 6 calls it a downgrade that MUST fail: sasl_cb_strict = true.
    server = starling_factory(sasl_cb_strict="true")
    server.adduser("alice@localhost", PW)
    c = tls_stream(server)
    el = c.scram("alice", PW, "sha256", gs2_flag="y")
    assert el.tag == SASL + "failure", c.dump()
    c.close()


def test_compat_y_flag_while_plus_offered_accepted_by_default(server):
    # COMPAT (docs/ARCHITECTURE.md): slixmpp sends "y" on every TLS stream.
    c = tls_stream(server)
    el = c.scram("alice", PW, "sha256", gs2_flag="y")
    assert el.tag == SASL + "success", c.dump()
    c.close()


# -- stream features -------------------------------------------------------------

def test_xep0478_stream_limits_advertised(starling_factory):
    server = starling_factory(max_stanza_bytes=65536)
    c = RawClient(server.c2s_port)
    plain = c.open_stream()
    for f in (plain, c.starttls(plain)):
        limits = f.find(LIMITS + "limits")
        assert limits is not None, "no XEP-0478 <limits/>\n" + c.dump()
        assert limits.findtext(LIMITS + "max-bytes") == "65536", c.dump()
    c.close()


# -- stanzas before authentication (RFC 6120 4.9.3.12) ---------------------------

def test_rfc6120_4_9_3_12_stanza_before_auth_not_authorized(server):
    c = tls_stream(server)
    c.send("<message to='alice@localhost' type='chat'><body>spoof</body></message>")
    c.expect_stream_error("not-authorized")
    still_serves(server)


def test_rfc6120_4_9_3_12_stanza_before_starttls_refused(server):
    c = plain_stream(server)
    c.send("<message to='alice@localhost' type='chat'><body>spoof</body></message>")
    el = c.expect(STREAMS + "error")
    conds = [local(x.tag) for x in el if local(x.tag) != "text"]
    assert conds[0] in ("not-authorized", "policy-violation"), c.dump()
    assert c.wait_closed(5)
    still_serves(server)


# -- XML (RFC 6120 4.9.3.13, 11) -------------------------------------------------

@pytest.mark.parametrize("junk", [
    b"<message><body>x</message>",
    b"<message to='a@localhost' to='b@localhost'/>",
    b"<message><body>\x01</body></message>",
    b"<message><body>\xff\xfe</body></message>",
    b"<foo:bar/>",
    b"<<<>>>",
], ids=["mismatched-tag", "duplicate-attribute", "control-char", "invalid-utf8",
        "unbound-prefix", "garbage"])
def test_rfc6120_4_9_3_13_malformed_xml_not_well_formed(server, junk):
    c = plain_stream(server)
    c.send(junk)
    if junk == b"<foo:bar/>":  # 4.9.3.2 is the more precise condition
        el = c.expect(STREAMS + "error")
        conds = [local(x.tag) for x in el if local(x.tag) != "text"]
        assert conds[0] in ("bad-namespace-prefix", "not-well-formed"), c.dump()
        assert c.wait_closed(5)
    else:
        c.expect_stream_error("not-well-formed")
    still_serves(server)


def test_rfc6120_4_9_3_13_malformed_xml_after_auth_not_well_formed(server):
    c = RawClient(server.c2s_port)
    c.login("alice", PW)
    c.send("<iq type='get' id='x'><ping xmlns='urn:xmpp:ping'></iq>")
    c.expect_stream_error("not-well-formed")
    still_serves(server)


def test_rfc6120_11_1_doctype_restricted_xml(server):
    c = RawClient(server.c2s_port)
    c.send("<?xml version='1.0'?><!DOCTYPE stream:stream [<!ENTITY x 'y'>]>" + c.header()[21:])
    c.expect_stream_error("restricted-xml")
    still_serves(server)


@pytest.mark.parametrize("junk", [
    "<!-- a comment -->",
    "<?evil processing-instruction?>",
    "<message><body>&custom;</body></message>",
], ids=["comment", "processing-instruction", "entity-reference"])
def test_rfc6120_11_1_restricted_xml_in_stream(server, junk):
    c = plain_stream(server)
    c.send(junk)
    el = c.expect(STREAMS + "error")
    conds = [local(x.tag) for x in el if local(x.tag) != "text"]
    # An undeclared entity is also a well-formedness error; either is fine.
    allowed = ("restricted-xml", "not-well-formed") if "&" in junk else ("restricted-xml",)
    assert conds and conds[0] in allowed, c.dump()
    assert c.wait_closed(5)
    still_serves(server)


def billion_laughs():
    ents = ["<!ENTITY lol 'lol'>"]
    for i in range(1, 10):
        ents.append("<!ENTITY lol%d '%s'>" % (i, ("&lol%s;" % ("" if i == 1 else i - 1)) * 10))
    return ("<?xml version='1.0'?><!DOCTYPE lolz [%s]>" % "".join(ents))


def test_rfc6120_11_1_billion_laughs_restricted_xml_never_expanded(server):
    base = server.rss_kib()
    c = RawClient(server.c2s_port)
    c.send(billion_laughs() + c.header()[21:] + "<message><body>&lol9;</body></message>")
    c.expect_stream_error("restricted-xml")
    # Also inside the stream, after a good header.
    c = plain_stream(server)
    c.send(billion_laughs()[21:] + "<message><body>&lol9;</body></message>")
    el = c.expect(STREAMS + "error")
    assert [local(x.tag) for x in el if local(x.tag) != "text"][0] in ("restricted-xml",
                                                                      "not-well-formed")
    grown = server.rss_kib() - base
    assert grown < RSS_SLACK_KIB, "RSS grew by %d KiB: entities expanded?" % grown
    still_serves(server)


def _flood(c, total, chunk=64 * 1024, deadline_s=30):
    """Send one huge <message> in chunks until the server reacts or total is sent."""
    c.send("<message to='bob@localhost' type='chat'><body>")
    block = b"A" * chunk
    sent, deadline = 0, time.monotonic() + deadline_s
    c.sock.settimeout(1)
    while sent < total and time.monotonic() < deadline:
        if not c.poll() or c.queue:
            break
        try:
            c.sock.sendall(block)
            sent += chunk
        except (socket.timeout, TimeoutError):
            continue  # the server reads slowly (rate limit); check for its answer
        except OSError:
            break
    return sent


def test_rfc6120_4_9_3_18_oversized_stanza_policy_violation(server):
    base = server.rss_kib()
    c = RawClient(server.c2s_port, timeout=10)
    c.login("alice", PW, "flood")
    _flood(c, 10 * 1024 * 1024)
    c.expect_stream_error("policy-violation", timeout=10)
    time.sleep(0.5)
    grown = server.rss_kib() - base
    assert grown < RSS_SLACK_KIB, "RSS %d KiB above baseline after a closed 10 MB stanza" % grown
    still_serves(server)


def test_rfc6120_4_9_3_18_oversized_stanza_before_auth_policy_violation(server):
    c = plain_stream(server)
    _flood(c, 10 * 1024 * 1024)
    c.expect_stream_error("policy-violation", timeout=10)
    still_serves(server)


def test_rfc6120_13_12_element_depth_limit_policy_violation(server):
    c = plain_stream(server)
    c.send("<a>" * 200)
    c.expect_stream_error("policy-violation")
    still_serves(server)


def test_rfc6120_13_12_attribute_count_limit_policy_violation(server):
    c = plain_stream(server)
    c.send("<message %s/>" % " ".join("a%d='x'" % i for i in range(500)))
    c.expect_stream_error("policy-violation")
    still_serves(server)


# -- stream header (RFC 6120 4.7, 4.8) -------------------------------------------

def test_rfc6120_4_9_3_6_wrong_to_host_unknown(server):
    c = RawClient(server.c2s_port)
    c.send(c.header(to="not-served.example"))
    c.expect_stream_error("host-unknown")
    still_serves(server)


@pytest.mark.parametrize("kw", [
    {"stream_ns": "urn:not:streams"},
    {"xmlns": "jabber:wrong"},
], ids=["stream-namespace", "content-namespace"])
def test_rfc6120_4_9_3_10_wrong_namespace_invalid_namespace(server, kw):
    c = RawClient(server.c2s_port)
    c.send(c.header(**kw))
    c.expect_stream_error("invalid-namespace")
    still_serves(server)


def test_rfc6120_4_7_5_higher_version_answered_with_1_0(server):
    # 4.7.5: the response carries the lower of the two versions; the server
    # may only refuse (4.9.3.25 unsupported-version) what it cannot speak.
    c = RawClient(server.c2s_port)
    f = c.open_stream(version="2.0")
    assert c.stream_attrs.get("version") == "1.0", c.dump()
    assert f.find(TLS + "starttls") is not None
    c.close()


def test_rfc6120_4_7_1_response_header_has_id_from_version(server):
    c = RawClient(server.c2s_port)
    c.open_stream()
    a = c.stream_attrs
    assert a.get("from") == "localhost" and a.get("version") == "1.0" and a.get("id"), a
    c.close()


# -- keepalive, timeouts, limits, shutdown ----------------------------------------

def test_rfc6120_4_6_1_whitespace_keepalive_accepted(server):
    c = RawClient(server.c2s_port)
    c.starttls()
    c.send(" \n \t ")  # before authentication
    assert c.plain("alice", PW).tag == SASL + "success"
    c.bind("ka")
    for _ in range(5):
        c.send(" ")
        time.sleep(0.05)
    c.send("\n\n<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>  ")
    el = c.expect(CLIENT + "iq")
    assert el.get("type") == "result" and el.get("id") == "p1", c.dump()
    c.close()


def test_rfc6120_4_9_3_4_handshake_timeout_connection_timeout(starling_factory):
    server = starling_factory(handshake_timeout=2)
    server.adduser("bob@localhost", PW)
    start = time.monotonic()
    c = plain_stream(server)
    c.expect_stream_error("connection-timeout", timeout=8)
    took = time.monotonic() - start
    assert 1.5 <= took <= 6, "closed after %.1fs, handshake_timeout = 2" % took
    # A connection that never even sends a header is closed too.
    silent = RawClient(server.c2s_port)
    assert silent.wait_closed(8), "silent connection kept open past handshake_timeout"
    # A client that completes the handshake in time is not cut off.
    still_serves(server)


def test_max_connections_honoured(starling_factory):
    server = starling_factory(max_connections=3)
    server.adduser("bob@localhost", PW)
    time.sleep(0.5)  # let conftest's readiness probes close
    held = [plain_stream(server) for _ in range(3)]
    extra = RawClient(server.c2s_port)
    got_features = False
    try:
        extra.send(extra.header())
        extra.expect(STREAMS + "features", timeout=3)
        got_features = True
    except (AssertionError, OSError):
        pass
    assert not got_features, "a 4th connection was served with max_connections = 3"
    assert extra.wait_closed(5), "the refused connection was left open"
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot is usable again
        try:
            plain_stream(server).close()
            break
        except (AssertionError, OSError):
            assert time.monotonic() < deadline, "no slot freed after closing a connection"
            time.sleep(0.2)
    for c in held:
        c.close()


def test_rfc6120_4_4_sigterm_sends_system_shutdown(server):
    pre = plain_stream(server)
    bound = RawClient(server.c2s_port)
    bound.login("alice", PW, "shutdown")
    server.signal(signal.SIGTERM)
    bound.expect_stream_error("system-shutdown", timeout=10)
    pre.expect_stream_error("system-shutdown", timeout=10)
    assert server.wait_exit() == 0


def test_rfc6120_4_9_1_2_error_before_header_still_opens_stream(server):
    # The server answers garbage sent instead of a header by opening its own
    # stream first, then the error (RFC 6120 4.9.1.2).
    c = RawClient(server.c2s_port)
    c.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    el = c.expect(STREAMS + "error")
    assert c.stream_attrs is not None
    assert [local(x.tag) for x in el if local(x.tag) != "text"][0] in ("not-well-formed",
                                                                      "invalid-namespace",
                                                                      "bad-format")
    assert c.wait_closed(5)
    still_serves(server)


def test_rfc6120_8_1_2_1_from_is_stamped_not_spoofed(server):
    a = RawClient(server.c2s_port)
    a.login("alice", PW, "a")
    b = RawClient(server.c2s_port)
    b.login("bob", PW, "b")
    b.send("<presence/>")
    b.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    while True:
        el = b.next_element()
        if el.tag == CLIENT + "iq" and el.get("id") == "sync":
            break
    a.send("<message to='bob@localhost/b' from='admin@localhost/x' type='chat'>"
           "<body>trust me</body></message>")
    # Either the forged 'from' is a stream error for alice (4.9.3.9
    # invalid-from) or the server stamps her real JID (8.1.2.1).
    time.sleep(0.5)
    a.poll()
    errors = [el for el in a.queue if el.tag == STREAMS + "error"]
    if errors:
        assert errors[0].find("{urn:ietf:params:xml:ns:xmpp-streams}invalid-from") is not None, a.dump()
    else:
        el = b.expect(CLIENT + "message")
        assert el.get("from") == "alice@localhost/a", b.dump()
    a.close()
    b.close()


def _tls13_stream(server, ctx, session=None):
    """A direct-TLS connection (Python's ssl, TLS 1.3) that reads the server's
    stream features, so the session ticket that came before them is in."""
    raw = socket.create_connection(("127.0.0.1", server.tls_port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    s.sendall(b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    got = b""
    while b"</stream:features>" not in got:
        chunk = s.recv(4096)
        assert chunk, "connection closed before the stream features: %r" % got
        got += chunk
    return s


def test_rfc8446_2_2_tls13_session_ticket_resumes_the_next_connection(server):
    """RFC 8446 2.2: the server's NewSessionTicket lets a reconnecting client
    skip the certificate (a resumed, PSK-based handshake); the stream works
    on the resumed connection. Checked through the daemon, whose handshake
    is its own (server/tlshs.c) for such a client."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    first = _tls13_stream(server, ctx)
    assert first.version() == "TLSv1.3"
    assert not first.session_reused
    session = first.session
    assert session is not None and session.has_ticket, "no session ticket from the server"
    first.close()
    second = _tls13_stream(server, ctx, session=session)
    assert second.session_reused, "the ticket was not accepted"
    second.close()
    still_serves(server)


HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def _read_until(sock, marker, what):
    got = b""
    while marker not in got:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            raise AssertionError("no %s within the timeout; got %r" % (what, got[-300:]))
        assert chunk, "connection closed before the %s: %r" % (what, got[-300:])
        got += chunk
    return got


@pytest.mark.parametrize("direct", [False, True], ids=["starttls", "direct-tls"])
def test_rfc6120_5_4_3_3_new_stream_sent_with_the_tls_finished_is_answered(starling_factory, direct):
    """RFC 6120 5.4.3.3: once TLS is up the client opens a new stream at
    once, and the server answers it with a stream header and features. The
    preload shim makes the daemon pause after its <proceed/> and after its
    ServerHello, as a busy server would: the ClientHello, then the client's
    Finished with that header right behind it, are already in the socket
    when the daemon reads again, so the handshake runs to its end within the
    call that sent <proceed/> and reads the header with the Finished. Found
    with the daemon under valgrind: the header waited, unread, until the
    client gave up."""
    import ssl
    srv = starling_factory(env=preload_env("slow_send", STARLING_TEST_SLOW_AFTER_HELLO_MS=300))
    srv.adduser("bob@localhost", PW)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    for attempt in range(2):  # a fresh handshake, then one resumed with its ticket
        raw = socket.create_connection(("127.0.0.1", srv.tls_port if direct else srv.c2s_port),
                                       timeout=5)
        if not direct:
            raw.sendall(HEADER)
            _read_until(raw, b"</stream:features>", "plaintext stream features")
            raw.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
            _read_until(raw, b"<proceed", "<proceed/>")
        s = ctx.wrap_socket(raw, server_hostname="localhost",
                            session=session if attempt else None)
        s.sendall(HEADER)  # right behind the Finished, while the daemon still pauses
        got = _read_until(s, b"</stream:features>", "stream features on the TLS stream")
        assert b"<mechanisms" in got
        assert s.session_reused == bool(attempt)
        session = s.session
        s.close()
    assert "left to OpenSSL" not in srv.log(), "the daemon's own handshake was not the one tested"
    still_serves(srv)
