"""test_robust_flood.py - fairness: a flooder, a throttled client and a slow
reader must not cost anyone else their service (docs/ARCHITECTURE.md #8).

- A client writes as fast as TCP lets it (large messages to itself, with
  whitespace between them) while another client pings the server 200 times,
  a few milliseconds apart: the ping round trips keep a p99 under 50 ms.
  The flooder runs in a separate process at nice 10, so neither its Python
  nor the kernel's scheduling of it is what the pinger measures: only the
  daemon's own fairness (its 64 KiB read budget per loop iteration). Under
  ASan the p99 is printed, not asserted.
- With a read rate limit, the same flood is read at c2s_rate: a ping sent
  after N bytes is answered only after about (N - c2s_burst) / c2s_rate
  seconds, while the other client's pings stay fast.
- A client that never reads while another sends it a lot is disconnected
  once its output queue passes max_send_queue ("output queue over ...,
  disconnecting"); the sender and new logins are still served. With stream
  management the slow reader loses nothing: what it never acknowledged goes
  to offline storage when its session ends, and its next login gets every
  message exactly once.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import pytest

from conftest import ASAN, SLOW
from rawxmpp import CLIENT, RawClient

HERE = os.path.dirname(os.path.abspath(__file__))
PW = "flood pw"
SM = "{urn:xmpp:sm:3}"
PINGS = 200
P99_LIMIT_MS = 50

# The flooder: logs in over STARTTLS, then a non-blocking loop that writes
# messages to its own full JID (plus whitespace) and reads and discards what
# comes back, until it has written `limit_bytes` or `limit_secs` passed; then
# a ping, and the time until its answer. Prints one JSON line.
FLOODER = r"""
import json, select, socket, ssl, sys, time
sys.path.insert(0, sys.argv[1])
from rawxmpp import RawClient
port, user, pw, limit_bytes, limit_secs = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
c = RawClient(port, timeout=20)
jid = c.login(user, pw, "flood")
unit = ("<message to='%s' type='headline'><body>%s</body></message>" % (jid, "f" * 16000)
        + " \n" * 512).encode()
sock = c.sock
sock.setblocking(False)
sent = got = 0
pending = b""
tail = b""
t0 = time.monotonic()
ping_at = done_at = None
def pump_read():
    global got, tail, done_at
    while True:
        try:
            d = sock.recv(262144)
        except (ssl.SSLWantReadError, BlockingIOError):
            return True
        if not d:
            return False
        got += len(d)
        if ping_at is not None and b"flood-end" in tail + d:
            done_at = time.monotonic()
        tail = d[-64:]
while done_at is None and time.monotonic() - t0 < limit_secs + 60:
    if not pending and ping_at is None:
        if sent >= limit_bytes or time.monotonic() - t0 >= limit_secs:
            pending = b"<iq type='get' id='flood-end' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
            ping_at = True
        else:
            pending = unit
    r, w, _ = select.select([sock], [sock] if pending else [], [], 0.05)
    if r or sock.pending():
        if not pump_read():
            print(json.dumps({"error": "closed by server", "sent": sent}))
            sys.exit(1)
    if w and pending:
        try:
            n = sock.send(pending)
            sent += n
            pending = pending[n:]
            if not pending and ping_at is True:
                ping_at = time.monotonic()
        except (ssl.SSLWantWriteError, BlockingIOError):
            pass
t_end = done_at or time.monotonic()
print(json.dumps({"sent": sent, "received": got, "pong": done_at is not None,
                  "elapsed": t_end - t0, "flood_secs": (ping_at if isinstance(ping_at, float) else t_end) - t0}))
"""


def start_flooder(server, user, limit_bytes, limit_secs):
    return subprocess.Popen([sys.executable, "-c", FLOODER, HERE, str(server.c2s_port), user, PW,
                             str(limit_bytes), str(limit_secs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # the antagonist yields the CPU to the daemon and the pinger:
                            # what is measured is the daemon's fairness, not the kernel's
                            preexec_fn=lambda: os.nice(10))


def flooder_result(p, timeout):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail("flooder did not finish within %ss: %s" % (timeout, err[-2000:]))
    assert p.returncode == 0, "flooder failed: %s %s" % (out, err[-2000:])
    return json.loads(out.strip().splitlines()[-1])


def ping_rtts(c, n=PINGS, gap=0.005):
    """n ping round trips, `gap` seconds apart; the RTTs in milliseconds."""
    rtts = []
    for i in range(n):
        t0 = time.monotonic()
        c.send("<iq type='get' id='p%d' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>" % i)
        while True:
            el = c.next_element(5 * SLOW)
            if el.tag == CLIENT + "iq" and el.get("id") == "p%d" % i:
                break
        assert el.get("type") == "result"
        rtts.append((time.monotonic() - t0) * 1000)
        time.sleep(gap)
    return rtts


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def wait_flooding(server, since, timeout=10 * SLOW):
    """Until the flooder is bound (its first message is on the way)."""
    assert server.wait_log(r"bound flooder@localhost/flood", timeout=timeout, since=since), \
        "the flooder never logged in"
    time.sleep(0.3)


def test_c2s_fairness_flooding_client_does_not_delay_others_pings(starling_factory):
    # no read-rate limit: only the per-iteration read budget stands between
    # the flooder and everyone else
    s = starling_factory(c2s_rate="1G", c2s_burst="1G", max_send_queue="64M")
    s.adduser("flooder", PW)
    s.adduser("pinger", PW)
    c = RawClient(s.c2s_port, timeout=5 * SLOW)
    c.login("pinger", PW, "rtt")
    idle = ping_rtts(c, 50)
    mark = s.log_size()
    p = start_flooder(s, "flooder", limit_bytes=1 << 40, limit_secs=6)
    wait_flooding(s, mark)
    busy = ping_rtts(c)
    res = flooder_result(p, 60 * SLOW)
    flood_mb = res["sent"] / 1e6
    print("flood: idle p50 %.2f ms p99 %.2f ms; under flood p50 %.2f ms p99 %.2f ms max %.2f ms; "
          "flooder wrote %.0f MB in %.1f s (%.0f MB/s), read back %.0f MB, final ping after %.2f s"
          % (statistics.median(idle), p99(idle), statistics.median(busy), p99(busy), max(busy),
             flood_mb, res["flood_secs"], flood_mb / res["flood_secs"], res["received"] / 1e6,
             res["elapsed"] - res["flood_secs"]))
    c.close()
    assert res["pong"], res
    assert flood_mb > 20, "the flood was too small to mean anything: %r" % res
    if ASAN:
        pytest.skip("ASan build: p99 %.1f ms not asserted (sanitizers slow the loop several times; "
                    "the latency budget is for the release build)" % p99(busy))
    assert p99(busy) < P99_LIMIT_MS, "ping p99 %.1f ms while another client floods" % p99(busy)


def test_rfc6120_13_9_flood_is_read_at_c2s_rate_while_others_stay_fast(starling_factory):
    rate, burst = 256 * 1024, 32 * 1024
    total = 2 * 1024 * 1024
    s = starling_factory(c2s_rate="256k", c2s_burst="32k")
    s.adduser("flooder", PW)
    s.adduser("pinger", PW)
    c = RawClient(s.c2s_port, timeout=5 * SLOW)
    c.login("pinger", PW, "rtt")
    mark = s.log_size()
    p = start_flooder(s, "flooder", limit_bytes=total, limit_secs=60)
    wait_flooding(s, mark)
    busy = ping_rtts(c)
    res = flooder_result(p, 90 * SLOW)
    expect = (res["sent"] - burst) / rate
    print("throttle: %d bytes read in %.2f s (expected %.2f s at c2s_rate, %.0f KiB/s measured); "
          "pings meanwhile p50 %.2f ms p99 %.2f ms" % (res["sent"], res["elapsed"], expect,
                                                      res["sent"] / 1024 / res["elapsed"],
                                                      statistics.median(busy), p99(busy)))
    assert res["pong"], res
    assert res["elapsed"] >= 0.85 * expect, "read at %.0f KiB/s, over c2s_rate 256 KiB/s" \
        % (res["sent"] / 1024 / res["elapsed"])
    assert res["elapsed"] <= 1.3 * expect + 1.5 * SLOW, "read at only %.0f KiB/s, far under c2s_rate" \
        % (res["sent"] / 1024 / res["elapsed"])
    if not ASAN:
        assert p99(busy) < P99_LIMIT_MS, "ping p99 %.1f ms beside a throttled flooder" % p99(busy)
    c.close()


def slow_reader(port, user):
    """A logged-in client with a tiny receive buffer that will never read."""
    c = RawClient.__new__(RawClient)
    c.domain, c.timeout, c.tls_backend = "localhost", 5.0 * SLOW, "ssl"
    c.tls, c.eof, c.transcript, c.stream_attrs, c.stream_closed = False, False, [], None, False
    c._reset_parser()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(c.timeout)
    sock.connect(("127.0.0.1", port))
    c.sock = sock
    c.login(user, PW, "slow")
    return c


def send_many(c, to, n, size):
    body = "s" * size
    for i in range(n):
        c.send("<message to='%s' type='chat'><body>%d %s</body></message>" % (to, i, body))
    c.send("<iq type='get' id='sync' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    while True:
        el = c.next_element(20 * SLOW)
        if el.tag == CLIENT + "iq" and el.get("id") == "sync":
            return


def message_numbers(c, n, limit):
    """The leading numbers of the message bodies c receives, until n have
    arrived or limit seconds have passed."""
    got = []
    deadline = time.monotonic() + limit
    while len(got) < n and time.monotonic() < deadline:
        try:
            el = c.next_element(1.0)
        except socket.timeout:
            continue
        if el.tag == CLIENT + "message" and el.findtext(CLIENT + "body"):
            got.append(int(el.findtext(CLIENT + "body").split()[0]))
    return got


def still_serves(s, user):
    c = RawClient(s.c2s_port, timeout=5 * SLOW)
    c.login(user, PW, "fresh")
    c.send("<iq type='get' id='ok' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert c.expect(CLIENT + "iq").get("type") == "result"
    c.close()


def test_c2s_slow_reader_disconnected_at_max_send_queue_others_served(starling_factory):
    s = starling_factory(max_send_queue="64k", c2s_rate="64M", c2s_burst="16M")
    s.adduser("slow", PW)
    s.adduser("sender", PW)
    slow = slow_reader(s.c2s_port, "slow")
    slow.send("<presence/>")
    mark = s.log_size()
    snd = RawClient(s.c2s_port, timeout=10 * SLOW)
    snd.login("sender", PW, "burst")
    rss0 = s.rss_kib()
    t0 = time.monotonic()
    # 6 MB for a 64 KiB queue: the kernel's socket buffers (up to 4 MB on
    # loopback) fill first, then the queue
    send_many(snd, "slow@localhost/slow", 3000, 2000)
    assert s.wait_log(r"output queue over 65536 bytes, disconnecting", since=mark), \
        "the slow reader was never disconnected"
    print("slow reader disconnected after %.2f s; RSS %d -> %d KiB"
          % (time.monotonic() - t0, rss0, s.rss_kib()))
    assert slow.wait_closed(5 * SLOW), "the slow reader's connection stayed open"
    # the sender and newcomers are still served
    snd.send("<iq type='get' id='after' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert snd.expect(CLIENT + "iq").get("id") == "after"
    still_serves(s, "slow")
    snd.close()


def test_xep0198_slow_reader_with_sm_loses_nothing(starling_factory):
    n, size = 3000, 2000  # 6 MB: more than the kernel buffers and the queue
    s = starling_factory(max_send_queue="64k", c2s_rate="64M", c2s_burst="16M", sm_resume_timeout=1,
                         host={"offline.max_messages": "10000"})
    s.adduser("slow", PW)
    s.adduser("sender", PW)
    slow = slow_reader(s.c2s_port, "slow")
    slow.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/><presence/>")
    time.sleep(0.2)
    mark = s.log_size()
    snd = RawClient(s.c2s_port, timeout=10 * SLOW)
    snd.login("sender", PW, "burst")
    send_many(snd, "slow@localhost", n, size)
    assert s.wait_log(r"output queue over 65536 bytes, disconnecting", since=mark), \
        "the slow reader was never disconnected"
    # hibernation ends after sm_resume_timeout; what was not acknowledged
    # (everything) is routed again, to offline storage
    assert s.wait_log(r"slow@localhost/slow: resumption window over", timeout=10 * SLOW, since=mark)
    slow.close()
    # the next login takes the stored messages
    c = RawClient(s.c2s_port, timeout=10 * SLOW)
    c.login("slow", PW, "laptop")
    c.send("<presence/>")
    got = message_numbers(c, n, 20 * SLOW)
    snd.poll()
    bounced = [el for el in snd.queue if el.tag == CLIENT + "message" and el.get("type") == "error"]
    missing = sorted(set(range(n)) - set(got))
    assert sorted(got) == list(range(n)), (
        "%d of %d messages never reached the slow reader's next login (first: %s); the sender got "
        "%d message errors instead; duplicated: %s" % (
            len(missing), n, missing[:10], len(bounced),
            sorted(x for x in set(got) if got.count(x) > 1)[:20]))
    c.close()
    snd.close()


def test_xep0160_offline_burst_paced_to_a_slow_reader_nothing_lost(starling_factory):
    """3,000 stored messages (6 MB, more than loopback's socket buffers) for
    a client with a 4 KiB receive buffer and a 64 KiB output queue: the
    server hands them over as the client reads, never disconnects it for
    its own burst, and deletes only what it handed over, so every message
    arrives once."""
    n, size = 3000, 2000
    s = starling_factory(max_send_queue="64k", c2s_rate="64M", c2s_burst="16M",
                         host={"offline.max_messages": "5000"})
    s.adduser("slow", PW)
    s.adduser("sender", PW)
    snd = RawClient(s.c2s_port, timeout=10 * SLOW)
    snd.login("sender", PW, "burst")
    mark = s.log_size()
    send_many(snd, "slow@localhost", n, size)
    deadline = time.monotonic() + 30 * SLOW
    while s.log()[mark:].count("stored a message for slow@localhost") < n:
        assert time.monotonic() < deadline, "the messages were not stored in time"
        time.sleep(0.1)
    slow = slow_reader(s.c2s_port, "slow")
    slow.send("<presence/>")
    time.sleep(1.0)  # not reading yet: its kernel buffers and our queue fill up
    got = message_numbers(slow, n, 30 * SLOW)
    assert "output queue over" not in s.log()[mark:], "the reader was disconnected"
    assert got == list(range(n)), "%d of %d arrived" % (len(got), n)
    slow.close()
    snd.close()
