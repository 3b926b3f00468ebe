"""test_robust_crash.py - acknowledged means durable, across SIGKILL.

Stream management (XEP-0198) answers <r/> only once the storage work of the
stanzas it counts is committed (server/c2s.c sm_ack_when_durable). This test
holds the server to that promise the hard way: several senders with SM
enabled write messages to offline users, asking for an ack after every
batch, and the daemon is killed with SIGKILL at random moments while they
do, three times, restarted on the same data directory each time. The
senders reconnect and go on with the messages they have not sent yet (a
message sent once is never sent again, so a duplicate can only come from
the server).

At the end the recipients log in with an initial presence and receive their
offline messages:

- every acknowledged message arrives, exactly once;
- an unacknowledged one may or may not arrive, but never twice;
- nothing arrives that was not sent;
- after a clean stop, the SQLite store passes PRAGMA integrity_check.

The conversation of one sender, per batch:

    sender sends:   <message to='rcpt1@localhost'><body>s0-17</body></message> x5
    sender sends:   <r xmlns='urn:xmpp:sm:3'/>
    sender receives: <a xmlns='urn:xmpp:sm:3' h='20'/>   -> s0-1..s0-20 are durable

Every other kill is timed to land right after some sender received an <a/>,
(the sender that got it sends the SIGKILL itself, before reading on),
and a second, deterministic test sends one burst, waits for its <a/> and
kills at once: an ack that went out before the commit shows up as a lost
message there.
"""
import collections
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time

from conftest import SLOW
from rawxmpp import CLIENT, Closed, RawClient
from test_sm import cut

SM = "{urn:xmpp:sm:3}"
PW = "crash pw"
SENDERS = 4
RECIPIENTS = 3
PER_SENDER = 75          # 300 messages in all
BATCH = 5                # messages per <r/>
PACE = 0.3 * SLOW        # seconds between batches: the load lasts long enough to be hit
KILLS = 3
KILL_LOCK = threading.Lock()
LOAD_DEADLINE = 45 * SLOW


class Sender(threading.Thread):
    """One account sending its list of (recipient, body) in batches, each
    followed by <r/>; reconnects after a crash and goes on where it was."""

    def __init__(self, server, user, msgs, generation, kill_on_ack):
        super().__init__(daemon=True)
        self.kill_on_ack = kill_on_ack  # set: SIGKILL the daemon right after the next <a/>
        self.server, self.user, self.msgs = server, user, msgs
        self.generation = generation  # callable: how many kills so far
        self.sent = set()      # every body written to a socket (maybe lost)
        self.acked = set()     # bodies covered by an <a h/>
        self.bounced = []      # (body, error) the server answered with an error
        self.stalls = []       # waits that timed out while no kill happened
        self.streams = 0
        self.error = None
        self.deadline = time.monotonic() + LOAD_DEADLINE

    def connect(self):
        c = RawClient(self.server.c2s_port, timeout=5 * SLOW)
        c.login(self.user, PW, "load")
        c.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
        c.expect(SM + "enabled")
        self.streams += 1
        return c

    def wait_ack(self, c, gen):
        """The h of the next <a/>; answers the server's own <r/> meanwhile."""
        deadline = time.monotonic() + 5 * SLOW
        while True:
            try:
                el = c.next_element(max(0.05, deadline - time.monotonic()))
            except socket.timeout:
                if self.generation() == gen and self.server.alive():
                    self.stalls.append("no <a/> within %ss on stream %d" % (5 * SLOW, self.streams))
                raise
            if el.tag == SM + "a":
                return int(el.get("h"))
            if el.tag == SM + "r":
                c.send("<a xmlns='urn:xmpp:sm:3' h='0'/>")
            elif el.tag == CLIENT + "message" and el.get("type") == "error":
                self.bounced.append((el.findtext(CLIENT + "body"), el.find(CLIENT + "error")))

    def run(self):
        try:
            self.load()
        except Exception as e:  # reported by the test, not lost in a thread
            self.error = "%s: %s" % (type(e).__name__, e)

    def load(self):
        i = 0
        while i < len(self.msgs) and time.monotonic() < self.deadline:
            gen = self.generation()
            try:
                c = self.connect()
            except (OSError, AssertionError, Closed):
                time.sleep(0.05)  # the daemon is down or restarting
                continue
            in_stream = []  # bodies in the order this stream counted them
            try:
                while i < len(self.msgs):
                    batch = self.msgs[i:i + BATCH]
                    for to, body in batch:
                        i += 1  # never sent again, whatever happens to it
                        self.sent.add(body)
                        in_stream.append(body)
                        c.send("<message to='%s' type='chat' id='%s'><body>%s</body></message>"
                               % (to, body, body))
                    c.send("<r xmlns='urn:xmpp:sm:3'/>")
                    h = self.wait_ack(c, gen)
                    assert h <= len(in_stream), "h=%d but only %d stanzas sent" % (h, len(in_stream))
                    self.acked.update(in_stream[:h])
                    if self.kill_on_ack.is_set():
                        with KILL_LOCK:
                            if self.kill_on_ack.is_set():
                                self.kill_on_ack.clear()
                                os.kill(self.server.pid, signal.SIGKILL)
                    time.sleep(PACE * random.uniform(0.5, 1.5))
            except (OSError, Closed, socket.timeout):
                pass  # killed under us: reconnect, continue with the next message
            finally:
                c.close()


def offline_bodies(server, user, timeout=10 * SLOW, quiet=1.5):
    """Log in, send the initial presence, and collect message bodies until
    nothing has arrived for `quiet` seconds."""
    c = RawClient(server.c2s_port, timeout=5 * SLOW)
    c.login(user, PW, "final")
    c.send("<presence/>")
    got = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        try:
            el = c.next_element(0.2)
        except socket.timeout:
            continue
        if el.tag == CLIENT + "message" and el.findtext(CLIENT + "body"):
            got.append(el.findtext(CLIENT + "body"))
            last = time.monotonic()
    c.close()
    return got


def kill_and_restart(server, n):
    if server.proc.poll() is None:
        os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(timeout=10 * SLOW)
    server._log.close()
    with open(server.log_path, "ab") as f:
        f.write(b"\n--- test_robust_crash: SIGKILL #%d, restarting on the same data dir ---\n" % n)
    server.start()


def test_xep0198_acknowledged_messages_survive_sigkill_exactly_once(starling_factory):
    s = starling_factory(host={"offline.max_messages": "1000"})
    senders_names = ["snd%d" % i for i in range(SENDERS)]
    rcpts = ["rcpt%d" % i for i in range(RECIPIENTS)]
    for u in senders_names + rcpts:
        s.adduser(u, PW)

    kills = [0]
    kill_on_ack = threading.Event()
    senders = []
    for si, u in enumerate(senders_names):
        msgs = [("%s@localhost" % rcpts[(si + k) % RECIPIENTS], "%s-%d" % (u, k))
                for k in range(PER_SENDER)]
        senders.append(Sender(s, u, msgs, lambda: kills[0], kill_on_ack))
    t0 = time.monotonic()
    for t in senders:
        t.start()

    rng = random.Random()
    kill_times = []
    while kills[0] < KILLS and any(t.is_alive() for t in senders):
        time.sleep(rng.uniform(0.4, 1.2) * SLOW)
        if not any(t.is_alive() for t in senders):
            break
        # every other kill lands just after some sender got an <a/>: the
        # moment when "acknowledged" and "committed" must already agree
        if kills[0] % 2 == 0:
            kill_on_ack.set()
            try:
                s.proc.wait(timeout=1.0 * SLOW)  # a sender kills it after its next <a/>
            except subprocess.TimeoutExpired:
                pass
            with KILL_LOCK:
                kill_on_ack.clear()
        kill_times.append(round(time.monotonic() - t0, 2))
        kills[0] += 1
        kill_and_restart(s, kills[0])
    for t in senders:
        t.join(LOAD_DEADLINE)
    load_secs = time.monotonic() - t0

    errors = [t.error for t in senders if t.error]
    assert not errors, "senders failed: %s" % errors
    sent = set().union(*(t.sent for t in senders))
    acked = set().union(*(t.acked for t in senders))
    assert kills[0] == KILLS, "the load ended after %d kills (of %d): too short to test" % (kills[0], KILLS)
    assert not any(t.is_alive() for t in senders), "senders did not finish within %ss" % LOAD_DEADLINE
    assert len(sent) == SENDERS * PER_SENDER, "only %d messages sent" % len(sent)
    stalls = [x for t in senders for x in t.stalls]
    assert not stalls, "acks stalled while the daemon was up: %s" % stalls
    bounced = [b for t in senders for b in t.bounced]
    assert not bounced, "messages bounced: %s" % bounced[:5]

    received = collections.Counter()
    for u in rcpts:
        received.update(offline_bodies(s, u))
    dups = sorted(b for b, n in received.items() if n > 1)
    lost = sorted(acked - set(received))
    unknown = sorted(set(received) - sent)
    print("crash test: %d sent, %d acknowledged, %d received, kills at %s s, load %.1f s, %d streams"
          % (len(sent), len(acked), sum(received.values()), kill_times, load_secs,
             sum(t.streams for t in senders)))
    # a clean stop, then the store itself, whatever the deliveries showed
    problems = s.stop()
    assert not problems, problems
    db = sqlite3.connect(os.path.join(s.dir, "starling.db"))
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    assert integrity == [("ok",)], "integrity_check after %d SIGKILLs: %s" % (KILLS, integrity[:10])
    assert not lost, "%d acknowledged messages lost: %s" % (len(lost), lost[:20])
    assert not dups, "%d messages delivered more than once: %s" % (len(dups), dups[:20])
    assert not unknown, "received bodies nobody sent: %s" % unknown[:20]
    # the crashes must really have cost something, or the test proved nothing
    assert len(acked) < len(sent) or sum(t.streams for t in senders) > SENDERS


def test_xep0198_ack_of_a_burst_to_an_offline_user_survives_immediate_sigkill(starling_factory):
    """sender sends: 200 messages to an offline user, then <r/>;
    sender receives: <a h='200'/>; the daemon is SIGKILLed at once; after a
    restart the recipient gets all 200."""
    s = starling_factory(host={"offline.max_messages": "10000"})
    s.adduser("snd", PW)
    s.adduser("rcpt", PW)
    results = []
    for trial, n in enumerate((1, 5, 50, 200)):
        c = RawClient(s.c2s_port, timeout=5 * SLOW)
        c.login("snd", PW, "burst")
        c.send("<enable xmlns='urn:xmpp:sm:3'/>")
        c.expect(SM + "enabled")
        c.send("".join("<message to='rcpt@localhost' type='chat'><body>b%d-%d</body></message>"
                       % (trial, i) for i in range(n)) + "<r xmlns='urn:xmpp:sm:3'/>")
        h = int(c.expect(SM + "a").get("h"))
        kill_and_restart(s, trial + 1)
        c.close()
        got = collections.Counter(offline_bodies(s, "rcpt", quiet=1.0))
        results.append((n, h, sum(got.values())))
        assert max(got.values(), default=0) <= 1, "duplicates: %s" % got.most_common(3)
    print("burst, then <a/>, then SIGKILL: (sent, acknowledged, delivered) %s" % results)
    assert all(delivered == h for n, h, delivered in results), \
        "acknowledged messages lost by a SIGKILL right after the ack: (sent, h, delivered) %s" % results


def test_xep0198_unacked_messages_of_hibernating_session_survive_sigterm(starling_factory):
    """alice's connection drops (SM, resumable) with three messages she never
    acknowledged; bob leaves; the daemon is stopped with SIGTERM while no
    stream is open;
    after a restart her next login gets the three from offline storage
    (the shutdown ends hibernating sessions, which routes their messages
    again, docs/internals/c2s.md)."""
    s = starling_factory()
    s.adduser("alice", PW)
    s.adduser("bob", PW)
    a = RawClient(s.c2s_port, timeout=5 * SLOW)
    a.login("alice", PW, "phone")
    a.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    a.expect(SM + "enabled")
    a.send("<presence/><iq type='get' id='avail' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    a.expect(CLIENT + "iq")  # alice is available: the messages go to her session
    b = RawClient(s.c2s_port, timeout=5 * SLOW)
    b.login("bob", PW, "desk")
    for i in range(3):
        b.send("<message to='alice@localhost' type='chat'><body>h%d</body></message>" % i)
    for i in range(3):
        assert a.expect(CLIENT + "message").findtext(CLIENT + "body") == "h%d" % i  # never acked
    cut(a)
    bob_port = b.sock.getsockname()[1]
    b.send("</stream:stream>")
    b.close()
    assert s.wait_log(r"alice@localhost/phone: connection lost, hibernating")
    # no stream is open any more, only alice's hibernating session remains
    assert s.wait_log(r"client 127\.0\.0\.1:%d: closed" % bob_port)
    problems = s.stop()
    assert not problems, problems
    s.start()
    got = collections.Counter(offline_bodies(s, "alice", quiet=1.0))
    assert sorted(got) == ["h0", "h1", "h2"], \
        "after SIGTERM and restart alice got %s of h0..h2; daemon log: %s" % (
            dict(got), [l for l in s.log().splitlines() if " warn " in l][:4])
    assert max(got.values()) == 1
