#!/usr/bin/python3
"""soak.py - thousands of sessions with churn for minutes: does starlingd's
memory stay flat? Run by `make soak` (not part of `make test`).

What it does, in order:

1. writes a config into a fresh /tmp/st-soak-XXXX/ (plain TCP with
   require_encryption = false to spare CPU, or TLS with SOAK_TLS=1; per-address
   limits raised to fit the load, rates left at their defaults) and starts
   $STARLING_BUILD/starlingd (default build/) on a free loopback port;
2. registers the accounts in-band (XEP-0077) and logs SOAK_SESSIONS sessions in
   (SCRAM-SHA-256; the client derives each account's salted password once
   and caches it, so logins cost the server no PBKDF2), spread over the
   source addresses 127.0.0.2 .. 127.0.0.50;
3. for SOAK_SECONDS: every second SOAK_CHURN of the sessions leave (half of them
   with </stream:stream>, half by a TCP reset) and log in again; SOAK_SM of the
   sessions use stream management, so reset ones hibernate, conflict with
   their successor or expire (sm_resume_timeout = 30s) and have their
   unacknowledged messages routed again; SOAK_MSG_RATE messages per second go
   between random sessions (to full and bare JIDs); server pings are
   answered;
4. samples the daemon's RSS and open descriptors every SOAK_SAMPLE seconds and
   prints the curve; at the end the churn stops, the load settles for a few
   seconds, and the final RSS must be within SOAK_TOLERANCE (10 %) of the RSS
   at SOAK_REF seconds (the first minute, or a third of a shorter run);
5. closes every session, stops the daemon with SIGTERM (it must exit 0) and
   checks its log for sanitizer reports.

Environment (defaults in brackets): SOAK_SECONDS [600], SOAK_SESSIONS [10000],
SOAK_ACCOUNTS [sessions / 4], SOAK_CHURN [0.01 per second], SOAK_MSG_RATE [200],
SOAK_SM [0.2], SOAK_SAMPLE [10 s, 5 s for runs under 5 min], SOAK_REF
[min(60, seconds / 3)], SOAK_TOLERANCE [0.10], SOAK_TLS [0], SOAK_LOG_LEVEL
[warn], SOAK_KEEP [unset: the data directory is removed after a pass],
STARLING_BUILD [build]. Exit status 0 = pass, 1 = fail.

Every loop is bounded: the phases have deadlines, every read has a timeout,
and the daemon is stopped by its PID only.

Design note: one asyncio loop drives every connection with a non-blocking
socket, an incremental expat parser per connection (xml.etree's
XMLPullParser) and no XMPP library, so the client costs far less CPU than
the server it measures on the same two cores.
"""
import asyncio
import base64
import hashlib
import hmac
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("STARLING_BUILD", "build"))
STARLINGD = os.path.join(BUILD, "starlingd")


def env_num(name, default, kind=float):
    v = os.environ.get(name, "")
    return kind(v) if v.strip() else default


SECONDS = env_num("SOAK_SECONDS", 600, int)
SESSIONS = env_num("SOAK_SESSIONS", 10000, int)
ACCOUNTS = env_num("SOAK_ACCOUNTS", max(1, SESSIONS // 4), int)
CHURN = env_num("SOAK_CHURN", 0.01)
MSG_RATE = env_num("SOAK_MSG_RATE", 200.0)
SM_SHARE = env_num("SOAK_SM", 0.2)
SAMPLE = env_num("SOAK_SAMPLE", 10 if SECONDS >= 300 else 5, int)
REF = env_num("SOAK_REF", min(60, SECONDS // 3), int)
TOLERANCE = env_num("SOAK_TOLERANCE", 0.10)
USE_TLS = env_num("SOAK_TLS", 0, int) == 1
LOG_LEVEL = os.environ.get("SOAK_LOG_LEVEL", "warn")
SOURCES = ["127.0.0.%d" % i for i in range(2, 51)]
DOMAIN = "localhost"
PASSWORD = "soak pw"
SM_RESUME = 30

STREAMS = "{http://etherx.jabber.org/streams}"
SASL = "{urn:ietf:params:xml:ns:xmpp-sasl}"
CLIENT = "{jabber:client}"
SM = "{urn:xmpp:sm:3}"
TLS_NS = "{urn:ietf:params:xml:ns:xmpp-tls}"
HEADER = ("<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          "xmlns:stream='http://etherx.jabber.org/streams' to='%s' version='1.0'>" % DOMAIN)
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|SUMMARY: \w+Sanitizer|runtime error: ")


def log(msg):
    print("[soak %7.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


T0 = time.monotonic()


class Stats:
    logins = login_failures = registered = 0
    sent = received = pings_answered = closed_by_server = conflicts = 0
    failures = []  # first few login failure reasons


# ---- the server ------------------------------------------------------------

class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="st-soak-", dir="/tmp")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        per_ip = SESSIONS // len(SOURCES) * 2 + 100
        conf = {
            "data_dir": self.dir,
            "bind": "127.0.0.1",
            "c2s_ports": self.port,
            "c2s_tls_ports": "",
            "admin_socket": os.path.join(self.dir, "admin.sock"),
            "log_level": LOG_LEVEL,
            "require_encryption": "false" if not USE_TLS else "true",
            "max_connections": SESSIONS * 2 + 1000,
            "max_connections_per_ip": per_ip,
            "sm_resume_timeout": SM_RESUME,
        }
        lines = ["# written by tests/soak/soak.py"] + ["%s = %s" % kv for kv in conf.items()]
        lines += ["[host %s]" % DOMAIN, "register.allow = true", "register.limit = 0",
                  "offline.max_messages = 1000"]
        self.config = os.path.join(self.dir, "starling.conf")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(self.dir, "starlingd.log")
        self.proc = None

    def start(self):
        if not os.access(STARLINGD, os.X_OK):
            sys.exit("soak: %s is missing: run make" % STARLINGD)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([STARLINGD, "-c", self.config], stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit("soak: starlingd exited with %s\n%s" % (self.proc.returncode, self.log()[-3000:]))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("soak: starlingd did not listen within 30 s")

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def cpu_s(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """SIGTERM by PID; the exit code, or None if it had to be killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                return None
        return self.proc.returncode


# ---- one XMPP connection ---------------------------------------------------

class StreamClosed(Exception):
    pass


SALTED = {}  # (user, salt, iterations) -> SaltedPassword: PBKDF2 once per account


class Conn:
    """A raw XMPP client connection on asyncio streams."""

    def __init__(self, slot, src):
        self.slot, self.src = slot, src
        self.reader = self.writer = None
        self.queue = []
        self.sm = False
        self.h_in = 0
        self.closed = False
        self.reset_parser()

    def reset_parser(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root = None
        self.queue = []

    async def connect(self, port):
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port, local_addr=(self.src, 0), limit=1 << 20), 10)

    def send(self, data):
        if not self.closed:
            self.writer.write(data.encode() if isinstance(data, str) else data)

    def feed(self, data):
        self.parser.feed(data)
        for ev, el in self.parser.read_events():
            if ev == "start":
                if self.depth == 0:
                    self.root = el
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.queue.append(el)
                    self.root.remove(el)
                elif self.depth == 0:
                    self.queue.append(ET.Element(STREAMS + "end"))

    async def next(self, timeout=15):
        while not self.queue:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise StreamClosed()
            self.feed(data)
        el = self.queue.pop(0)
        if el.tag == STREAMS + "end":
            raise StreamClosed("</stream:stream>")
        if el.tag == STREAMS + "error":
            conds = [c.tag.rsplit("}", 1)[-1] for c in el if not c.tag.endswith("}text")]
            raise StreamClosed("stream error %s %s" % (",".join(conds), el.findtext(
                "{urn:ietf:params:xml:ns:xmpp-streams}text") or ""))
        return el

    async def expect(self, tag, timeout=15):
        while True:
            el = await self.next(timeout)
            if el.tag == tag:
                return el
            if el.tag in (SASL + "failure",):
                raise StreamClosed("SASL failure")

    async def open_stream(self):
        self.reset_parser()
        self.send(HEADER)
        return await self.expect(STREAMS + "features")

    async def starttls(self):
        await self.open_stream()
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        await self.expect(TLS_NS + "proceed")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        await self.writer.start_tls(ctx, server_hostname=DOMAIN)

    async def scram(self, user, password):
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n=%s,r=%s" % (user, nonce)
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>%s</auth>"
                  % base64.b64encode(b"n,," + first_bare.encode()).decode())
        el = await self.expect(SASL + "challenge")
        server_first = base64.b64decode(el.text or "")
        attrs = dict(kv.split(b"=", 1) for kv in server_first.split(b","))
        salt, iters = base64.b64decode(attrs[b"s"]), int(attrs[b"i"])
        key = (user, salt, iters)
        if key not in SALTED:
            SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
        salted = SALTED[key]
        final_bare = "c=biws,r=%s" % attrs[b"r"].decode()
        auth_msg = ("%s,%s,%s" % (first_bare, server_first.decode(), final_bare)).encode()
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored = hashlib.sha256(client_key).digest()
        sig = hmac.new(stored, auth_msg, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        self.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>" % base64.b64encode(
            ("%s,p=%s" % (final_bare, base64.b64encode(proof).decode())).encode()).decode())
        await self.expect(SASL + "success")

    async def login(self, port, user, resource, sm):
        await self.connect(port)
        if USE_TLS:
            await self.starttls()
        await self.open_stream()
        await self.scram(user, PASSWORD)
        await self.open_stream()
        self.send("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  "<resource>%s</resource></bind></iq>" % resource)
        el = await self.expect(CLIENT + "iq")
        if el.get("type") != "result":
            raise StreamClosed("bind failed")
        if sm:
            self.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
            await self.expect(SM + "enabled")
            self.sm = True
        self.send("<presence/>")

    async def register(self, port, user):
        await self.connect(port)
        if USE_TLS:
            await self.starttls()
        await self.open_stream()
        self.send("<iq type='set' id='reg'><query xmlns='jabber:iq:register'><username>%s</username>"
                  "<password>%s</password></query></iq>" % (user, PASSWORD))
        el = await self.expect(CLIENT + "iq", timeout=60)
        self.close()
        if el.get("type") != "result" and el.find(CLIENT + "error/{urn:ietf:params:xml:ns:xmpp-stanzas}conflict") is None:
            raise StreamClosed("registration of %s failed: %s" % (user, ET.tostring(el)[:300]))

    async def serve(self):
        """Read until the connection ends: count messages, answer pings and <r/>."""
        try:
            while True:
                el = await self.next(timeout=3600)
                if el.tag.startswith(CLIENT):
                    self.h_in += 1
                if el.tag == CLIENT + "message":
                    Stats.received += 1
                elif el.tag == CLIENT + "iq" and el.get("type") == "get":
                    self.send("<iq type='result' id='%s' to='%s'/>" % (el.get("id"), el.get("from") or DOMAIN))
                    Stats.pings_answered += 1
                elif el.tag == SM + "r":
                    self.send("<a xmlns='urn:xmpp:sm:3' h='%d'/>" % (self.h_in % (1 << 32)))
        except StreamClosed as e:
            if not self.closed:
                Stats.closed_by_server += 1
                if "conflict" in str(e):
                    Stats.conflicts += 1
        except (asyncio.TimeoutError, OSError, ET.ParseError):
            pass
        finally:
            self.close()

    def close(self, abrupt=False):
        if self.closed or not self.writer:
            self.closed = True
            return
        self.closed = True
        try:
            if abrupt:
                sock = self.writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.writer.transport.abort()
            else:
                # acknowledge what arrived, so ending the session routes nothing again
                if self.sm:
                    self.writer.write(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % (self.h_in % (1 << 32)))
                self.writer.write(b"</stream:stream>")
                self.writer.close()
        except (OSError, RuntimeError):
            pass


# ---- the load --------------------------------------------------------------

class Load:
    def __init__(self, server):
        self.server = server
        self.conns = [None] * SESSIONS  # slot -> Conn (live) or None
        self.tasks = set()
        self.rng = random.Random(1)
        self.logging_in = set()

    def account(self, slot):
        return "soak%d" % (slot % ACCOUNTS)

    async def register_all(self):
        sem = asyncio.Semaphore(32)

        async def one(i):
            async with sem:
                c = Conn(-1, SOURCES[i % len(SOURCES)])
                await c.register(self.server.port, "soak%d" % i)
                Stats.registered += 1
        await asyncio.gather(*(one(i) for i in range(ACCOUNTS)))

    async def login_slot(self, slot):
        # one login per slot at a time: two would share a resource, and the
        # server rightly replaces the first with <conflict/>
        if slot in self.logging_in:
            return False
        self.logging_in.add(slot)
        try:
            return await self.login_slot_once(slot)
        finally:
            self.logging_in.discard(slot)

    async def login_slot_once(self, slot):
        c = Conn(slot, SOURCES[slot % len(SOURCES)])
        sm = self.rng.random() < SM_SHARE
        try:
            await c.login(self.server.port, self.account(slot), "s%d" % slot, sm)
        except (StreamClosed, asyncio.TimeoutError, OSError, ET.ParseError) as e:
            Stats.login_failures += 1
            if len(Stats.failures) < 10:
                Stats.failures.append("slot %d: %s %s" % (slot, type(e).__name__, e))
            c.close(abrupt=True)
            return False
        Stats.logins += 1
        self.conns[slot] = c
        t = asyncio.ensure_future(c.serve())
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return True

    async def login_all(self):
        sem = asyncio.Semaphore(100)

        async def one(slot):
            async with sem:
                await self.login_slot(slot)
        await asyncio.gather(*(one(s) for s in range(SESSIONS)))

    def live(self):
        return sum(1 for c in self.conns if c is not None and not c.closed)

    async def churn_loop(self, until):
        """Every 100 ms, a tenth of the per-second churn leaves and comes back."""
        carry = 0.0
        pending = set()
        while time.monotonic() < until:
            await asyncio.sleep(0.1)
            carry += SESSIONS * CHURN / 10
            k, carry = int(carry), carry - int(carry)
            for _ in range(k):
                slot = self.rng.randrange(SESSIONS)
                c = self.conns[slot]
                if c is not None:
                    c.close(abrupt=self.rng.random() < 0.5)
                    self.conns[slot] = None
                t = asyncio.ensure_future(self.login_slot(slot))
                pending.add(t)
                t.add_done_callback(pending.discard)
            # slots whose connection the server closed come back too
            for slot in range(0, SESSIONS, max(1, SESSIONS // 200)):
                c = self.conns[slot]
                if c is not None and c.closed:
                    self.conns[slot] = None
                    t = asyncio.ensure_future(self.login_slot(slot))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=60)

    async def message_loop(self, until):
        carry = 0.0
        n = 0
        while time.monotonic() < until:
            await asyncio.sleep(0.05)
            carry += MSG_RATE * 0.05
            k, carry = int(carry), carry - int(carry)
            for _ in range(k):
                c = self.conns[self.rng.randrange(SESSIONS)]
                if c is None or c.closed:
                    continue
                dst = self.rng.randrange(SESSIONS)
                to = "%s@%s" % (self.account(dst), DOMAIN)
                if self.rng.random() < 0.5:
                    to += "/s%d" % dst
                n += 1
                c.send("<message to='%s' type='chat' id='m%d'><body>soak message %d %s</body></message>"
                       % (to, n, n, "x" * self.rng.randrange(10, 400)))
                Stats.sent += 1

    async def sampler(self, until, curve):
        t_start = time.monotonic()
        cpu0 = self.server.cpu_s()
        while True:
            t = time.monotonic() - t_start
            rss, fds = self.server.rss_kib(), self.server.fds()
            cpu = self.server.cpu_s() - cpu0
            curve.append((t, rss, fds))
            log("t=%5.0fs RSS %7.1f MiB fds %6d live %6d logins %7d failed %4d msgs sent %7d recv %7d "
                "server-closed %5d cpu %.0f%%" % (t, rss / 1024, fds, self.live(), Stats.logins,
                                                  Stats.login_failures, Stats.sent, Stats.received,
                                                  Stats.closed_by_server, 100 * cpu / max(t, 1e-3)))
            if time.monotonic() >= until:
                return
            await asyncio.sleep(min(SAMPLE, max(0.0, until - time.monotonic())))

    def close_all(self):
        for c in self.conns:
            if c is not None:
                c.close()


async def main_async(server):
    load = Load(server)
    log("registering %d accounts" % ACCOUNTS)
    await asyncio.wait_for(load.register_all(), max(120, ACCOUNTS / 20))
    log("registered; logging in %d sessions from %d addresses" % (SESSIONS, len(SOURCES)))
    await asyncio.wait_for(load.login_all(), max(180, SESSIONS / 20))
    log("%d sessions up (%d login failures); churn %.1f%%/s, %g msgs/s, for %d s"
        % (load.live(), Stats.login_failures, CHURN * 100, MSG_RATE, SECONDS))
    curve = []
    until = time.monotonic() + SECONDS
    await asyncio.gather(load.churn_loop(until), load.message_loop(until), load.sampler(until, curve))
    log("churn over; settling 5 s")
    await asyncio.sleep(5)
    final = (time.monotonic() - T0, server.rss_kib(), server.fds())
    live = load.live()
    load.close_all()
    await asyncio.sleep(1)
    for t in list(load.tasks):
        t.cancel()
    return curve, final, live


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SESSIONS * 2 + 2048
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < SESSIONS + 1024:
            sys.exit("soak: RLIMIT_NOFILE hard limit %d is too low for %d sessions" % (hard, SESSIONS))
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else need, hard))
    server = Server()
    log("starlingd %s, data %s, port %d, %s" % (STARLINGD, server.dir, server.port,
                                              "STARTTLS" if USE_TLS else "plain TCP"))
    server.start()
    ok = True
    try:
        curve, final, live = asyncio.run(main_async(server))
    except BaseException:
        server.stop()
        print("soak: aborted; log kept in %s" % server.log_path)
        raise
    rc = server.stop()
    text = server.log()

    ref = min(curve, key=lambda p: abs(p[0] - REF))
    print("\nRSS curve (seconds since all sessions were up, RSS MiB, server fds):")
    peak = max(p[1] for p in curve)
    for t, rss, fds in curve:
        print("  %6.0f  %7.1f  %6d  %s" % (t, rss / 1024, fds, "#" * int(50 * rss / max(peak, 1))))
    growth = (final[1] - ref[1]) / ref[1]
    print("\nsessions %d (accounts %d), live at the end %d; logins %d, failures %d; messages sent %d, "
          "received %d; pings answered %d; closed by server %d"
          % (SESSIONS, ACCOUNTS, live, Stats.logins, Stats.login_failures, Stats.sent, Stats.received,
             Stats.pings_answered, Stats.closed_by_server))
    print("RSS at %.0f s: %.1f MiB; at the end: %.1f MiB (%+.1f%%, limit %+.0f%%); peak %.1f MiB"
          % (ref[0], ref[1] / 1024, final[1] / 1024, 100 * growth, 100 * TOLERANCE, peak / 1024))
    if Stats.failures:
        print("first login failures:\n  " + "\n  ".join(Stats.failures))
    warns = [l for l in text.splitlines() if " warn " in l or " error " in l]
    dropped = sum("out of memory while storing" in l for l in warns)
    if dropped:
        # not a memory problem: storage refuses jobs once shutdown has begun
        print("note: %d messages of hibernating sessions were not stored at shutdown "
              "(mod_offline: 'out of memory while storing')" % dropped)
    print("daemon log: %d warn/error lines%s" % (len(warns), (", e.g.\n  " + "\n  ".join(warns[:5])) if warns else ""))
    if growth > TOLERANCE:
        print("FAIL: RSS grew %.1f%% after the reference point" % (100 * growth))
        ok = False
    if Stats.login_failures > max(5, Stats.logins // 1000):
        print("FAIL: %d login failures" % Stats.login_failures)
        ok = False
    if rc != 0:
        print("FAIL: starlingd exited with %s after SIGTERM" % rc)
        ok = False
    if SANITIZER_RE.search(text):
        print("FAIL: sanitizer report in %s" % server.log_path)
        ok = False
    if ok:
        print("PASS")
        if not os.environ.get("SOAK_KEEP"):
            shutil.rmtree(server.dir, ignore_errors=True)
        else:
            print("log kept in %s (SOAK_KEEP)" % server.log_path)
    else:
        print("log kept in %s" % server.log_path)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
