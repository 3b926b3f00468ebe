"""rawxmpp.py - a small byte-level XMPP client for tests that must misbehave.

slixmpp never sends a DOCTYPE, a wrong namespace or a 10 MB stanza, so the
stream-error tests speak XMPP by hand: a socket (plain, TLS via the ssl
module after a hand-made STARTTLS, or direct TLS), an incremental XML parser
that turns what the server sends into top-level elements, and waits that are
always bounded by a timeout.

    c = RawClient(port)
    c.open_stream()                       # -> the <stream:features/> element
    c.starttls()                          # STARTTLS + restart, -> features
    c.send("<iq type='get' id='1'>...")   # anything, bytes or str
    el = c.expect(SASL + "failure")       # the next element with that tag
    c.expect_stream_error("not-authorized")

For tls-exporter channel binding (RFC 9266) the TLS layer can be pyOpenSSL,
which exposes SSL_export_keying_material; the ssl module does not.
"""
import base64
import hashlib
import hmac
import os
import select
import socket
import ssl
import time
import xml.etree.ElementTree as ET

STREAMS = "{http://etherx.jabber.org/streams}"
STREAM_ERR_NS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERR_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "{urn:ietf:params:xml:ns:xmpp-tls}"
SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"
BIND = "{urn:ietf:params:xml:ns:xmpp-bind}"
CLIENT = "{jabber:client}"
LIMITS = "{urn:xmpp:stream-limits:0}"
SASL_CB = "{urn:xmpp:sasl-cb:0}"
REGISTER_FEATURE = "{http://jabber.org/features/iq-register}"
REGISTER = "{jabber:iq:register}"


class Closed(Exception):
    """The server closed the TCP connection."""


def local(tag):
    return tag.rsplit("}", 1)[-1]


def ns(tag):
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def tls_client_context():
    """The daemon's certificate is self-signed: trust it blindly."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _PyOpenSSLConn:
    """Just enough of a socket over pyOpenSSL for RawClient."""

    def __init__(self, sock, server_name, timeout):
        from OpenSSL import SSL
        self.SSL = SSL
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        self.sock = sock
        sock.setblocking(False)
        self.conn = SSL.Connection(ctx, sock)
        self.conn.set_tlsext_host_name(server_name.encode())
        self.conn.set_connect_state()
        self._io(self.conn.do_handshake, time.monotonic() + timeout)

    def _io(self, fn, deadline, *args):
        while True:
            try:
                return fn(*args)
            except self.SSL.WantReadError:
                r, w = [self.sock], []
            except self.SSL.WantWriteError:
                r, w = [], [self.sock]
            except self.SSL.ZeroReturnError:
                return b""
            except self.SSL.SysCallError as e:
                if e.args and e.args[0] in (-1, 0):  # unexpected EOF
                    return b""
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("TLS operation timed out")
            select.select(r, w, [], left)

    def settimeout(self, t):
        self.timeout = t

    def recv(self, n):
        return self._io(self.conn.recv, time.monotonic() + getattr(self, "timeout", 5), n)

    def sendall(self, data):
        deadline = time.monotonic() + 10
        while data:
            n = self._io(self.conn.send, deadline, data)
            data = data[n:]

    def close(self):
        self.sock.close()

    def version(self):
        return self.conn.get_protocol_version_name()

    def exporter(self, label, length):
        return self.conn.export_keying_material(label, length, None)

    def peer_cert_der(self):
        from OpenSSL import crypto
        return crypto.dump_certificate(crypto.FILETYPE_ASN1, self.conn.get_peer_certificate())


class RawClient:
    def __init__(self, port, host="127.0.0.1", timeout=5.0, direct_tls=False, domain="localhost",
                 tls_backend="ssl"):
        self.domain = domain
        self.timeout = timeout
        self.tls_backend = tls_backend
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.tls = False
        self.eof = False
        self.transcript = []  # ("C"|"S", bytes) in order, for failure messages
        self.stream_attrs = None
        self.stream_closed = False
        self._reset_parser()
        if direct_tls:
            self._wrap_tls()

    # -- transport ----------------------------------------------------------

    def _wrap_tls(self):
        if self.tls_backend == "pyopenssl":
            self.sock = _PyOpenSSLConn(self.sock, self.domain, self.timeout)
        else:
            self.sock = tls_client_context().wrap_socket(self.sock, server_hostname=self.domain)
        self.tls = True

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(("C", data[:2000]))
        self.sock.sendall(data)

    def try_send(self, data):
        """send() that reports a connection the server already closed as False."""
        try:
            self.send(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return False

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            self.eof = True
            raise Closed()
        self.transcript.append(("S", data[:4000]))
        return data

    def poll(self):
        """Read and parse whatever has already arrived, without waiting.
        Returns False once the server has closed the connection."""
        while not self.eof:
            fd = self.sock.sock if isinstance(self.sock, _PyOpenSSLConn) else self.sock
            pending = getattr(self.sock, "pending", lambda: 0)()
            if not pending and not select.select([fd], [], [], 0)[0]:
                break
            try:
                self._feed(self._recv(time.monotonic() + 0.2))
            except socket.timeout:
                break
            except Closed:
                break
        return not self.eof

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def dump(self):
        """The conversation so far, for assertion messages."""
        out = []
        for who, data in self.transcript[-40:]:
            out.append("%s: %s" % (who, data.decode("utf-8", "replace")))
        return "\n".join(out)

    # -- XML ----------------------------------------------------------------

    def _reset_parser(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root = None
        self.queue = []

    def _feed(self, data):
        self.parser.feed(data)
        for event, el in self.parser.read_events():
            if event == "start":
                if self.depth == 0:
                    self.root = el
                    self.stream_attrs = dict(el.attrib)
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.queue.append(el)
                    self.root.remove(el)
                elif self.depth == 0:
                    self.stream_closed = True

    def next_element(self, timeout=None):
        """The next top-level element the server sends; raises socket.timeout
        or Closed (after any elements that arrived before the close)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.queue:
            if self.stream_closed:
                raise Closed("stream closed by server")
            self._feed(self._recv(deadline))
        return self.queue.pop(0)

    def expect(self, tag, timeout=None):
        """Skip elements until one with this {ns}tag arrives."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen = []
        try:
            while True:
                el = self.next_element(max(0.01, deadline - time.monotonic()))
                if el.tag == tag:
                    return el
                seen.append(el.tag)
        except (socket.timeout, Closed) as e:
            raise AssertionError("expected %s, got %s then %s\n%s"
                                 % (tag, seen, type(e).__name__, self.dump())) from None

    def wait_closed(self, timeout=None):
        """True if the server closes the TCP connection within timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                data = self._recv(deadline)
                try:
                    self._feed(data)
                except ET.ParseError:
                    pass
        except Closed:
            return True
        except socket.timeout:
            return False

    def expect_stream_error(self, condition, timeout=None):
        """A <stream:error/> with this condition, then </stream:stream> and the
        TCP close (RFC 6120 4.9.1.1). Returns the error element."""
        el = self.expect(STREAMS + "error", timeout)
        conds = [local(c.tag) for c in el if ns(c.tag) == STREAM_ERR_NS and local(c.tag) != "text"]
        assert conds == [condition], "stream error %s, expected %s\n%s" % (conds, condition, self.dump())
        assert self.wait_closed(5), "server did not close the connection after the stream error\n" + self.dump()
        assert self.stream_closed, "no </stream:stream> after the stream error\n" + self.dump()
        return el

    # -- XMPP steps -----------------------------------------------------------

    def header(self, to=None, xmlns="jabber:client", stream_ns="http://etherx.jabber.org/streams",
               version="1.0", extra=""):
        to = self.domain if to is None else to
        attrs = " to='%s'" % to if to else ""
        if version:
            attrs += " version='%s'" % version
        return ("<?xml version='1.0'?><stream:stream xmlns='%s' xmlns:stream='%s'%s "
                "xml:lang='en'%s>" % (xmlns, stream_ns, attrs, extra))

    def open_stream(self, **kw):
        """Send a stream header; return the server's <stream:features/>."""
        self._reset_parser()
        self.stream_closed = False
        self.send(self.header(**kw))
        return self.expect(STREAMS + "features")

    def starttls(self, features=None):
        """From a fresh connection (or after open_stream(), given its
        features): STARTTLS, TLS handshake, new stream. Returns the features
        offered over TLS."""
        features = features if features is not None else self.open_stream()
        assert features.find(TLS + "starttls") is not None, "no STARTTLS offered\n" + self.dump()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.expect(TLS + "proceed")
        self._wrap_tls()
        return self.open_stream()

    def mechanisms(self, features):
        m = features.find(SASL + "mechanisms")
        return [x.text for x in m.findall(SASL + "mechanism")] if m is not None else []

    def auth(self, mech, initial=b""):
        payload = base64.b64encode(initial).decode() if initial else "="
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='%s'>%s</auth>"
                  % (mech, payload))

    def plain(self, user, password):
        """SASL PLAIN; returns the <success/> or <failure/> element."""
        self.auth("PLAIN", b"\0" + user.encode() + b"\0" + password.encode())
        return self._sasl_outcome()

    def _sasl_outcome(self):
        while True:
            el = self.next_element()
            if el.tag in (SASL + "success", SASL + "failure"):
                return el
            if el.tag == STREAMS + "error":
                raise AssertionError("stream error during SASL\n" + self.dump())

    def scram(self, user, password, hash_name="sha256", cb_type=None, cb_data=None, gs2_flag=None):
        """SCRAM-SHA-1/-256 (RFC 5802/7677), -PLUS when cb_type is given.
        Returns the <success/> or <failure/> element; on success the server
        signature is checked."""
        mech = {"sha1": "SCRAM-SHA-1", "sha256": "SCRAM-SHA-256"}[hash_name]
        if cb_type:
            mech += "-PLUS"
            gs2 = b"p=" + cb_type.encode() + b",,"
        else:
            gs2 = (gs2_flag or "n").encode() + b",,"
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), nonce)
        self.auth(mech, gs2 + first_bare.encode())
        el = self.next_element()
        if el.tag != SASL + "challenge":
            return el
        server_first = base64.b64decode(el.text or "")
        attrs = dict(kv.split(b"=", 1) for kv in server_first.split(b","))
        assert attrs[b"r"].startswith(nonce.encode()), "server nonce does not extend ours"
        salt, iters = base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
        cbind = base64.b64encode(gs2 + (cb_data or b"")).decode()
        final_bare = "c=%s,r=%s" % (cbind, attrs[b"r"].decode())
        auth_msg = ("%s,%s,%s" % (first_bare, server_first.decode(), final_bare)).encode()
        salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iters)
        client_key = hmac.new(salted, b"Client Key", hash_name).digest()
        stored = hashlib.new(hash_name, client_key).digest()
        sig = hmac.new(stored, auth_msg, hash_name).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        final = "%s,p=%s" % (final_bare, base64.b64encode(proof).decode())
        self.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>"
                  % base64.b64encode(final.encode()).decode())
        el = self._sasl_outcome()
        if el.tag == SASL + "success":
            server_key = hmac.new(salted, b"Server Key", hash_name).digest()
            expect = b"v=" + base64.b64encode(hmac.new(server_key, auth_msg, hash_name).digest())
            assert base64.b64decode(el.text or "") == expect, "bad server signature"
        return el

    def bind(self, resource="raw"):
        """After SASL success: restart the stream, bind; returns the full JID."""
        features = self.open_stream()
        assert features.find(BIND + "bind") is not None, "no <bind/> after SASL\n" + self.dump()
        self.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  "<resource>%s</resource></bind></iq>" % resource)
        el = self.expect(CLIENT + "iq")
        assert el.get("type") == "result", "bind failed\n" + self.dump()
        return el.find(BIND + "bind/" + BIND + "jid").text

    def login(self, user, password, resource="raw"):
        """STARTTLS + PLAIN + bind; returns the full JID."""
        self.starttls()
        el = self.plain(user, password)
        assert el.tag == SASL + "success", "login failed\n" + self.dump()
        return self.bind(resource)


def stanza_error(el):
    """(type, condition) of a stanza's <error/>, or None."""
    err = el.find(CLIENT + "error")
    if err is None:
        return None
    conds = [local(c.tag) for c in err if ns(c.tag) == STANZA_ERR_NS and local(c.tag) != "text"]
    return err.get("type"), (conds[0] if conds else None)


# -- IM helpers (RFC 6121 rosters, subscriptions, presence) -------------------
#
# The IM scenario tests (test_im_*.py) have several raw clients talking at
# once, so they need to wait for one particular stanza while others stay
# queued for a later wait: take() keeps what it skips, expect() drops it.

ROSTER_NS = "jabber:iq:roster"
ROSTER = "{%s}" % ROSTER_NS
_ABSENT = object()


def summary(el):
    """A one-line picture of a stanza for assertion messages."""
    attrs = " ".join("%s='%s'" % (k, v) for k, v in sorted(el.attrib.items()))
    kids = ",".join(local(k.tag) for k in el)
    err = stanza_error(el) if el.tag.startswith(CLIENT) else None
    name = local(el.tag) if el.tag.startswith(CLIENT) else el.tag or "?"
    if not el.tag.startswith("{"):
        name = "{}" + el.tag  # no namespace at all: not a jabber:client stanza
    return "<%s %s>[%s]%s" % (name, attrs, kids, " error=%s/%s" % err if err else "")


def stanza(name, **attrs):
    """A predicate: a jabber:client <name/> whose attributes match attrs.
    Write from_ for 'from'; a value of None means the attribute is absent."""
    def pred(el):
        if el.tag != CLIENT + name:
            return False
        for k, v in attrs.items():
            if el.get(k.rstrip("_"), None) != v:
                return False
        return True
    pred.__doc__ = "<%s %s>" % (name, " ".join("%s=%r" % kv for kv in attrs.items()))
    return pred


def presence(**attrs):
    return stanza("presence", **attrs)


def take(c, pred, timeout=None, what=None):
    """The first stanza (already queued or arriving within timeout) for which
    pred(el) is true; every other stanza stays queued, in order."""
    deadline = time.monotonic() + (c.timeout if timeout is None else timeout)
    while True:
        for i, el in enumerate(c.queue):
            if pred(el):
                return c.queue.pop(i)
        try:
            if c.stream_closed:
                raise Closed()
            c._feed(c._recv(deadline))
        except (socket.timeout, Closed) as e:
            raise AssertionError("expected %s, got %s (queued: %s)\n%s" % (
                what or pred.__doc__ or "a stanza", type(e).__name__,
                [summary(x) for x in c.queue], c.dump())) from None


def none_arrives(c, pred, wait=0.5, what=None):
    """Assert that no stanza matching pred is queued or arrives within wait
    seconds; other stanzas stay queued."""
    deadline = time.monotonic() + wait
    while True:
        bad = [el for el in c.queue if pred(el)]
        assert not bad, "unexpected %s: %s\n%s" % (what or pred.__doc__ or "stanza",
                                                  summary(bad[0]), c.dump())
        if c.stream_closed or time.monotonic() >= deadline:
            return
        try:
            c._feed(c._recv(deadline))
        except (socket.timeout, Closed):
            pass


def discard(c, pred=lambda el: True):
    """Drop the queued stanzas matching pred (what arrived so far)."""
    c.poll()
    c.queue = [el for el in c.queue if not pred(el)]


_ids = iter(range(1, 1 << 30))


def next_id(prefix="im"):
    return "%s%d" % (prefix, next(_ids))


def iq(c, type, payload, to=None, timeout=None):
    """Send an iq with payload (XML text); return its result or error."""
    i = next_id()
    c.send("<iq type='%s' id='%s'%s>%s</iq>" % (type, i, " to='%s'" % to if to else "", payload))
    return take(c, lambda el: el.tag == CLIENT + "iq" and el.get("id") == i
                and el.get("type") in ("result", "error"), timeout, "the answer to iq %s" % i)


def sync(c, timeout=None):
    """A ping round trip: everything c sent before has been processed."""
    el = iq(c, "get", "<ping xmlns='urn:xmpp:ping'/>", to=c.domain, timeout=timeout)
    assert el.get("type") == "result", summary(el)


def im_login(port, user, password, resource="raw", timeout=5.0):
    """A RawClient logged in as user/resource (STARTTLS, PLAIN, bind)."""
    c = RawClient(port, timeout=timeout)
    c.full_jid = c.login(user, password, resource)
    c.bare_jid = c.full_jid.split("/", 1)[0]
    return c


def roster_item_dict(item):
    """<item/> -> {'jid', 'name', 'subscription', 'ask', 'approved', 'groups'}."""
    return {"jid": item.get("jid"), "name": item.get("name"),
            "subscription": item.get("subscription"), "ask": item.get("ask"),
            "approved": item.get("approved"),
            "groups": sorted(g.text or "" for g in item.findall(ROSTER + "group"))}


def roster_get(c, ver=_ABSENT, timeout=None):
    """Roster get (with ver='...' if given); returns the answer iq."""
    attr = "" if ver is _ABSENT else " ver='%s'" % ver
    return iq(c, "get", "<query xmlns='%s'%s/>" % (ROSTER_NS, attr), timeout=timeout)


def roster_of(c):
    """Fetch the roster: {jid: item dict}; asserts a result."""
    el = roster_get(c)
    assert el.get("type") == "result", summary(el)
    q = el.find(ROSTER + "query")
    return {i.get("jid"): roster_item_dict(i) for i in q.findall(ROSTER + "item")}


def roster_set(c, jid, name=None, groups=(), subscription=None, timeout=None):
    """Roster set of one item; returns the answer iq."""
    attrs = " jid='%s'" % jid
    if name is not None:
        attrs += " name='%s'" % name
    if subscription is not None:
        attrs += " subscription='%s'" % subscription
    body = "".join("<group>%s</group>" % g for g in groups)
    return iq(c, "set", "<query xmlns='%s'><item%s>%s</item></query>" % (ROSTER_NS, attrs, body),
              timeout=timeout)


def is_push(jid=None):
    """A predicate: a roster push (iq set, jabber:iq:roster), for jid if given."""
    def pred(el):
        if el.tag != CLIENT + "iq" or el.get("type") != "set":
            return False
        items = el.findall(ROSTER + "query/" + ROSTER + "item")
        return bool(items) and (jid is None or items[0].get("jid") == jid)
    pred.__doc__ = "a roster push for %s" % (jid or "any item")
    return pred


def take_push(c, jid=None, timeout=None):
    """Wait for a roster push (for jid), answer it (RFC 6121 §2.1.6) and
    return (item dict, the push's ver)."""
    el = take(c, is_push(jid), timeout)
    c.send("<iq type='result' id='%s'/>" % el.get("id"))
    q = el.find(ROSTER + "query")
    items = q.findall(ROSTER + "item")
    assert len(items) == 1, "a roster push carries exactly one item: %s" % summary(el)
    return roster_item_dict(items[0]), q.get("ver")
