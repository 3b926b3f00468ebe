"""test_mam.py - XEP-0313 Message Archive Management with XEP-0059 paging,
against the real daemon, with raw clients.

Each test reads like the conversation it checks: bob writes, alice reads,
alice asks her archive. Names give the requirement proved.
"""
import time

import pytest

from rawxmpp import CLIENT, RawClient, iq, next_id, stanza_error, sync, take

PW = "mam pw"
MODULES = "disco version ping time register roster presence offline carbons mam"
MAM = "urn:xmpp:mam:2"
SID = "{urn:xmpp:sid:0}stanza-id"
RSM = "{http://jabber.org/protocol/rsm}"
FWD = "{urn:xmpp:forward:0}forwarded"


@pytest.fixture
def server(starling_factory):
    return make_server(starling_factory)


def make_server(factory, **host):
    h = {"modules": MODULES, "offline.max_messages": "100000"}
    h.update(host)
    # a fast client: the 10,000-message test writes as fast as it can
    s = factory(host=h, c2s_rate="64M", c2s_burst="64M")
    for u in ("alice", "bob", "carol"):
        s.adduser(u + "@localhost", PW)
    return s


def login(server, user, resource="raw", presence=True):
    c = RawClient(server.c2s_port, timeout=10)
    c.full_jid = c.login(user, PW, resource)
    c.bare_jid = c.full_jid.split("/", 1)[0]
    if presence:
        c.send("<presence/>")
        sync(c)
    return c


def chat(c, to, body, mid=None, extra=""):
    c.send("<message to='%s' type='chat' id='%s'><body>%s</body>%s</message>"
           % (to, mid or next_id("m"), body, extra))


def form(**fields):
    """A MAM query form: keyword fields (before_id -> before-id); a list is a multi value."""
    out = ["<x xmlns='jabber:x:data' type='submit'>",
           "<field var='FORM_TYPE' type='hidden'><value>%s</value></field>" % MAM]
    for k, v in fields.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        out.append("<field var='%s'>%s</field>" % (k.replace("_", "-"),
                                                     "".join("<value>%s</value>" % x for x in vals)))
    return "".join(out) + "</x>"


def rsm(max=None, after=None, before=None, index=None):
    parts = []
    if max is not None:
        parts.append("<max>%d</max>" % max)
    if after is not None:
        parts.append("<after>%s</after>" % after)
    if before is not None:
        parts.append("<before>%s</before>" % before if before else "<before/>")
    if index is not None:
        parts.append("<index>%d</index>" % index)
    return "<set xmlns='http://jabber.org/protocol/rsm'>%s</set>" % "".join(parts)


def query(c, fields=None, page=None, extra="", timeout=None):
    """Run one query: ([(archive id, forwarded message, stamp)], the iq answer)."""
    qid = next_id("q")
    iid = next_id("iq")
    c.send("<iq type='set' id='%s'><query xmlns='%s' queryid='%s'>%s%s%s</query></iq>"
           % (iid, MAM, qid, form(**fields) if fields else "", page or "", extra))
    results = []
    while True:
        el = take(c, lambda e: (e.tag == CLIENT + "iq" and e.get("id") == iid) or
                  (e.tag == CLIENT + "message" and
                   e.find("{%s}result" % MAM) is not None and
                   e.find("{%s}result" % MAM).get("queryid") == qid), timeout)
        if el.tag == CLIENT + "iq":
            return results, el
        assert el.get("from") == c.bare_jid, "results come from the archive's JID"
        r = el.find("{%s}result" % MAM)
        fwd = r.find(FWD)
        results.append((r.get("id"), fwd.find(CLIENT + "message"),
                        fwd.find("{urn:xmpp:delay}delay").get("stamp")))


def fin(answer):
    assert answer.get("type") == "result", stanza_error(answer)
    f = answer.find("{%s}fin" % MAM)
    s = f.find(RSM + "set")
    first = s.find(RSM + "first")
    return {"complete": f.get("complete") == "true",
            "first": first.text if first is not None else None,
            "index": int(first.get("index")) if first is not None else None,
            "last": s.findtext(RSM + "last"), "count": int(s.findtext(RSM + "count"))}


def bodies(results):
    return [m.findtext(CLIENT + "body") for _, m, _ in results]


def wait_archived(c, n, fields=None, timeout=10):
    """Until the archive (filtered) holds n messages; returns the count."""
    deadline = time.monotonic() + timeout
    while True:
        _, a = query(c, fields, rsm(max=0))
        count = fin(a)["count"]
        if count >= n or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_xep0313_account_advertises_mam(server):
    alice = login(server, "alice")
    el = iq(alice, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>", to=alice.bare_jid)
    feats = {f.get("var") for f in el.iter("{http://jabber.org/protocol/disco#info}feature")}
    assert MAM in feats and MAM + "#extended" in feats


def test_xep0313_form_fields_discovery(server):
    alice = login(server, "alice")
    el = iq(alice, "get", "<query xmlns='%s'/>" % MAM)
    assert el.get("type") == "result"
    fields = {f.get("var") for f in el.iter("{jabber:x:data}field")}
    assert {"FORM_TYPE", "with", "start", "end", "before-id", "after-id", "ids"} <= fields


def test_xep0313_archives_both_directions_with_the_live_stanza_id(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    chat(bob, "alice@localhost", "hello alice", "b1")
    live = take(alice, lambda e: e.tag == CLIENT + "message" and e.get("id") == "b1")
    sid = live.find(SID)
    assert sid is not None and sid.get("by") == "alice@localhost"
    chat(alice, "bob@localhost/raw", "hello bob", "a1")
    back = take(bob, lambda e: e.tag == CLIENT + "message" and e.get("id") == "a1")
    # the id of alice's own archive copy is not for bob (XEP-0313 §3)
    assert all(s.get("by") != "alice@localhost" for s in back.findall(SID))
    assert wait_archived(alice, 2) == 2
    res, answer = query(alice)
    assert bodies(res) == ["hello alice", "hello bob"]
    assert res[0][0] == sid.get("id"), "the archive id is the stanza-id the client saw"
    assert res[0][1].get("from") == "bob@localhost/raw"
    assert res[1][1].get("to") == "bob@localhost/raw"
    f = fin(answer)
    assert f["complete"] and f["count"] == 2 and f["first"] == res[0][0] and f["last"] == res[1][0]
    # bob's archive has both too, under his own ids
    assert wait_archived(bob, 2) == 2
    res_b, _ = query(bob)
    assert bodies(res_b) == ["hello alice", "hello bob"]
    assert res_b[1][0] == back.find(SID).get("id")


def test_xep0313_offline_copy_and_archive_share_the_stanza_id(server):
    bob = login(server, "bob")
    chat(bob, "alice@localhost", "while you were away", "off1")
    sync(bob)
    time.sleep(0.3)
    alice = login(server, "alice", presence=False)
    alice.send("<presence/>")
    stored = take(alice, lambda e: e.tag == CLIENT + "message" and e.get("id") == "off1")
    assert stored.find("{urn:xmpp:delay}delay") is not None
    sids = stored.findall(SID)
    assert len(sids) == 1
    res, _ = query(alice)
    assert [r[0] for r in res] == [sids[0].get("id")]


def test_xep0313_no_archive_for_groupchat_headline_or_chat_states(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    bob.send("<message to='alice@localhost' type='headline'><body>news</body></message>")
    bob.send("<message to='alice@localhost' type='chat'>"
             "<active xmlns='http://jabber.org/protocol/chatstates'/></message>")
    bob.send("<message to='alice@localhost' type='chat'><body>secret</body>"
             "<no-permanent-store xmlns='urn:xmpp:hints'/></message>")
    chat(bob, "alice@localhost", "kept")
    sync(bob)
    assert wait_archived(alice, 1) == 1
    time.sleep(0.3)
    res, _ = query(alice)
    assert bodies(res) == ["kept"]


def test_xep0313_filters_with_start_end_and_ids(server):
    alice, bob, carol = login(server, "alice"), login(server, "bob"), login(server, "carol")
    chat(bob, "alice@localhost", "b-1")
    sync(bob)
    assert wait_archived(alice, 1) == 1
    time.sleep(0.05)
    middle = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".%06dZ" % (
        int(time.time() * 1e6) % 1000000)
    time.sleep(0.05)
    chat(carol, "alice@localhost", "c-1")
    sync(carol)
    chat(bob, "alice@localhost/raw", "b-2")
    sync(bob)
    assert wait_archived(alice, 3) == 3
    res, a = query(alice, {"with": "bob@localhost"})
    assert bodies(res) == ["b-1", "b-2"] and fin(a)["count"] == 2
    res, _ = query(alice, {"with": "bob@localhost/raw"})
    assert bodies(res) == ["b-1", "b-2"]
    res, _ = query(alice, {"with": "bob@localhost/other"})
    assert res == []
    res, _ = query(alice, {"start": middle})
    assert bodies(res) == ["c-1", "b-2"]
    res, _ = query(alice, {"end": middle})
    assert bodies(res) == ["b-1"]
    all_res, _ = query(alice)
    ids = [r[0] for r in all_res]
    res, _ = query(alice, {"ids": [ids[2], ids[0]]})
    assert bodies(res) == ["b-1", "b-2"], "ids come back in archive order"
    res, _ = query(alice, {"after_id": ids[0], "before_id": ids[2]})
    assert bodies(res) == ["c-1"]
    # unknown ids: item-not-found (XEP-0313 §4.1.2, §4.3.2)
    for fields, page in (({"ids": ["nope"]}, None), ({"after_id": "nope"}, None),
                         (None, rsm(max=5, after="nope")), (None, rsm(max=5, before="nope"))):
        _, a = query(alice, fields, page)
        assert stanza_error(a) == ("cancel", "item-not-found"), (fields, page)
    # an unknown field: feature-not-implemented (§4.1.1)
    _, a = query(alice, {"{urn:example}free-text": "x"})
    assert stanza_error(a)[1] == "feature-not-implemented"
    _, a = query(alice, {"start": "yesterday"})
    assert stanza_error(a)[1] == "bad-request"


def test_xep0313_metadata_and_flip_page(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    el = iq(alice, "get", "<metadata xmlns='%s'/>" % MAM)
    assert el.get("type") == "result" and len(el.find("{%s}metadata" % MAM)) == 0
    for i in range(3):
        chat(bob, "alice@localhost", "m%d" % i)
    sync(bob)
    assert wait_archived(alice, 3) == 3
    res, _ = query(alice)
    el = iq(alice, "get", "<metadata xmlns='%s'/>" % MAM)
    md = el.find("{%s}metadata" % MAM)
    assert md.find("{%s}start" % MAM).get("id") == res[0][0]
    assert md.find("{%s}end" % MAM).get("id") == res[2][0]
    flipped, a = query(alice, None, rsm(max=2, before=""), extra="<flip-page/>")
    assert bodies(flipped) == ["m2", "m1"]
    assert fin(a)["first"] == res[1][0], "flipping changes only the order sent"


def test_xep0059_rsm_paging_10000_messages_forwards_and_backwards(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    # alice is offline: bob's messages go to offline storage and both archives
    alice.send("<presence type='unavailable'/>")
    sync(alice)
    n = 10000
    batch = []
    for i in range(n):
        to = "alice@localhost" if i % 2 == 0 else "carol@localhost"
        batch.append("<message to='%s' type='chat' id='p%d'><body>%d</body></message>" % (to, i, i))
        if len(batch) == 500:
            bob.send("".join(batch))
            batch = []
    bob.send("".join(batch))
    sync(bob, timeout=60)
    assert wait_archived(bob, n, timeout=60) == n
    with_alice = {"with": "alice@localhost"}
    want = [str(i) for i in range(0, n, 2)]
    # forwards in pages of 50
    got, after, pages = [], None, 0
    while True:
        res, a = query(bob, with_alice, rsm(max=50, after=after))
        f = fin(a)
        assert f["count"] == n // 2
        if res:
            assert f["index"] == len(got) and f["first"] == res[0][0] and f["last"] == res[-1][0]
        got += bodies(res)
        pages += 1
        if f["complete"]:
            break
        after = f["last"]
    assert got == want and pages in (100, 101)
    # backwards from the end, in pages of 50
    back, before = [], ""
    while True:
        res, a = query(bob, with_alice, rsm(max=50, before=before))
        f = fin(a)
        if res:
            assert f["index"] == n // 2 - len(back) - len(res)
        back = bodies(res) + back
        if f["complete"]:
            break
        before = f["first"]
    assert back == want
    # the unfiltered archive holds all of them; max is capped
    res, a = query(bob, None, rsm(max=100000))
    assert len(res) == 250 and fin(a)["count"] == n and not fin(a)["complete"]
    res, a = query(bob, None, rsm(max=10, index=9990))
    assert bodies(res) == [str(i) for i in range(9990, 10000)] and fin(a)["complete"]


def prefs(c, default, always=(), never=()):
    el = iq(c, "set", "<prefs xmlns='%s' default='%s'><always>%s</always><never>%s</never></prefs>"
            % (MAM, default, "".join("<jid>%s</jid>" % j for j in always),
               "".join("<jid>%s</jid>" % j for j in never)))
    assert el.get("type") == "result", stanza_error(el)
    p = el.find("{%s}prefs" % MAM)
    return p.get("default"), sorted(j.text for j in p.iter("{%s}jid" % MAM))


def test_xep0313_prefs_never_always_roster(server):
    alice, bob, carol = login(server, "alice"), login(server, "bob"), login(server, "carol")
    el = iq(alice, "get", "<prefs xmlns='%s'/>" % MAM)
    assert el.find("{%s}prefs" % MAM).get("default") == "always"
    assert prefs(alice, "always", never=["bob@localhost"]) == ("always", ["bob@localhost"])
    chat(bob, "alice@localhost", "not kept")
    chat(carol, "alice@localhost", "kept 1")
    sync(bob), sync(carol)
    assert wait_archived(alice, 1) == 1
    time.sleep(0.3)
    assert bodies(query(alice)[0]) == ["kept 1"]
    # default never, except carol
    prefs(alice, "never", always=["carol@localhost"])
    chat(bob, "alice@localhost", "not kept 2")
    chat(carol, "alice@localhost", "kept 2")
    sync(bob), sync(carol)
    assert wait_archived(alice, 2) == 2
    # roster: only contacts in alice's roster (bob), also while alice is offline
    el = iq(alice, "set", "<query xmlns='jabber:iq:roster'><item jid='bob@localhost'/></query>")
    assert el.get("type") == "result"
    prefs(alice, "roster")
    el = iq(alice, "get", "<prefs xmlns='%s'/>" % MAM)
    assert el.find("{%s}prefs" % MAM).get("default") == "roster"
    alice.send("<presence type='unavailable'/>")
    sync(alice)
    chat(bob, "alice@localhost", "kept 3")
    chat(carol, "alice@localhost", "not kept 3")
    sync(bob), sync(carol)
    assert wait_archived(alice, 3) == 3
    time.sleep(0.3)
    assert bodies(query(alice)[0]) == ["kept 1", "kept 2", "kept 3"]


def test_xep0313_archive_is_for_its_owner_only(server):
    alice, bob = login(server, "alice"), login(server, "bob")
    el = iq(bob, "set", "<query xmlns='%s'/>" % MAM, to="alice@localhost")
    assert stanza_error(el) == ("auth", "forbidden")


def test_mam_retention_purges_old_messages(starling_factory):
    server = make_server(starling_factory, **{"mam.retention": "2s"})
    alice, bob = login(server, "alice"), login(server, "bob")
    chat(bob, "alice@localhost", "soon gone")  # bob's copy and alice's
    sync(bob)
    assert wait_archived(alice, 1) == 1
    assert server.wait_log(r"expired 2 archived messages", timeout=10)
    assert fin(query(alice)[1])["count"] == 0


def test_xep0313_unacked_messages_routed_again_are_archived_once(starling_factory):
    """Stream management routes a dead session's unacknowledged messages
    again (to offline storage here): same stanza-id, one archive entry."""
    from test_sm import cut, enable
    server = starling_factory(host={"modules": MODULES}, sm_resume_timeout=1)
    for u in ("alice", "bob"):
        server.adduser(u + "@localhost", PW)
    a = RawClient(server.c2s_port, timeout=10)
    a.login("alice", PW, "phone")
    enable(a)
    a.send("<presence/>")
    bob = login(server, "bob")
    chat(bob, "alice@localhost", "unacked", "u1")
    live = take(a, lambda e: e.tag == CLIENT + "message" and e.get("id") == "u1")
    cut(a)  # received, never acknowledged
    time.sleep(2.5)  # the resumption window closes: the message is routed again
    alice = login(server, "alice", "laptop", presence=False)
    alice.send("<presence/>")
    again = take(alice, lambda e: e.tag == CLIENT + "message" and e.get("id") == "u1")
    assert [s.get("id") for s in again.findall(SID)] == [live.find(SID).get("id")]
    res, answer = query(alice)
    assert [r[0] for r in res] == [live.find(SID).get("id")] and fin(answer)["count"] == 1
