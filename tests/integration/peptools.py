"""peptools.py - helpers for the caps and PEP tests (XEP-0115, XEP-0163).

A raw client announces its features as a real client does: it computes the
XEP-0115 §5.1 verification string, puts <c/> in its presence and answers the
server's disco#info query for node#ver. Everything else speaks the wire
protocol through rawxmpp's take()/iq() helpers.
"""
import base64
import hashlib
import xml.etree.ElementTree as ET

from rawxmpp import CLIENT, im_login, iq, summary, sync, take

CAPS_NS = "http://jabber.org/protocol/caps"
INFO_NS = "http://jabber.org/protocol/disco#info"
ITEMS_NS = "http://jabber.org/protocol/disco#items"
PUBSUB_NS = "http://jabber.org/protocol/pubsub"
OWNER_NS = PUBSUB_NS + "#owner"
EVENT_NS = PUBSUB_NS + "#event"
ERRORS_NS = PUBSUB_NS + "#errors"
XDATA_NS = "jabber:x:data"
NODE = "https://tests.invalid/raw"
PW = "pep pw"
MODULES = "disco version ping time register roster presence caps pep private vcard"


def q(ns, tag):
    return "{%s}%s" % (ns, tag)


def caps_ver(identities, features, forms=()):
    """XEP-0115 §5.1. identities: (category, type, lang, name) tuples;
    forms: (FORM_TYPE, {var: [values]})."""
    s = "".join("%s/%s/%s/%s<" % i for i in sorted(identities))
    s += "".join(f + "<" for f in sorted(features))
    for ftype, fields in sorted(forms):
        s += ftype + "<"
        for var in sorted(fields):
            s += var + "<" + "".join(v + "<" for v in sorted(fields[var]))
    return base64.b64encode(hashlib.sha1(s.encode()).digest()).decode()


def ver_of_query(query):
    """The ver of a received disco#info <query/> element."""
    ids = [(i.get("category", ""), i.get("type", ""),
            i.get("{http://www.w3.org/XML/1998/namespace}lang", ""), i.get("name", ""))
           for i in query.findall(q(INFO_NS, "identity"))]
    feats = [f.get("var") for f in query.findall(q(INFO_NS, "feature"))]
    return caps_ver(ids, feats)


IDENTITY = ("client", "pc", "", "peptest")


def info_xml(features, node):
    body = "<identity category='%s' type='%s' name='%s'/>" % (IDENTITY[0], IDENTITY[1], IDENTITY[3])
    body += "".join("<feature var='%s'/>" % f for f in features)
    return "<query xmlns='%s' node='%s'>%s</query>" % (INFO_NS, node, body)


def is_caps_query(el):
    return (el.tag == CLIENT + "iq" and el.get("type") == "get"
            and el.find(q(INFO_NS, "query")) is not None)


def answer_caps_query(c, features, timeout=None, lie=False):
    """Wait for the server's disco#info to our node#ver and answer it
    (with one feature fewer if lie: the hash then does not match)."""
    el = take(c, is_caps_query, timeout, "the server's disco#info query")
    node = el.find(q(INFO_NS, "query")).get("node")
    sent = features[:-1] if lie else features
    c.send("<iq type='result' id='%s' to='%s'>%s</iq>" % (el.get("id"), el.get("from"),
                                                         info_xml(sent, node)))
    return node


def send_caps_presence(c, features, extra=""):
    ver = caps_ver([IDENTITY], features)
    c.send("<presence><c xmlns='%s' hash='sha-1' node='%s' ver='%s'/>%s</presence>"
           % (CAPS_NS, NODE, ver, extra))
    return ver


def client(server, user, resource="raw", features=None, answer=True):
    """Logged in, available with caps for features (a list of vars); the
    disco#info query is answered unless answer is False."""
    c = im_login(server.c2s_port, user, PW, resource)
    if features is not None:
        # one ver per client, so the server always asks (nothing cached yet)
        features = list(features) + ["urn:x-test:%s/%s" % (user, resource)]
        send_caps_presence(c, features)
        if answer:
            answer_caps_query(c, features)
    else:
        c.send("<presence/>")
    sync(c)
    return c


def notify(*nodes):
    return ["http://jabber.org/protocol/caps"] + [n + "+notify" for n in nodes]


def befriend(a, b):
    """Mutual presence subscription ('both') between two logged-in clients."""
    for x, y in ((a, b), (b, a)):
        x.send("<presence to='%s' type='subscribe'/>" % y.bare_jid)
        take(y, lambda el: el.tag == CLIENT + "presence" and el.get("type") == "subscribe",
             what="a subscription request")
        y.send("<presence to='%s' type='subscribed'/>" % x.bare_jid)
        sync(y)
        sync(x)


def form(form_type, fields, type="submit"):
    body = "<field var='FORM_TYPE' type='hidden'><value>%s</value></field>" % form_type
    for var, val in fields.items():
        body += "<field var='%s'><value>%s</value></field>" % (var, val)
    return "<x xmlns='%s' type='%s'>%s</x>" % (XDATA_NS, type, body)


def publish(c, node, payload, id=None, options=None, to=None):
    item = "<item%s>%s</item>" % (" id='%s'" % id if id else "", payload)
    opts = ""
    if options:
        opts = "<publish-options>%s</publish-options>" % form(PUBSUB_NS + "#publish-options", options)
    return iq(c, "set", "<pubsub xmlns='%s'><publish node='%s'>%s</publish>%s</pubsub>"
              % (PUBSUB_NS, node, item, opts), to=to)


def items(c, owner, node, max_items=None, ids=()):
    attr = " max_items='%d'" % max_items if max_items is not None else ""
    body = "".join("<item id='%s'/>" % i for i in ids)
    return iq(c, "get", "<pubsub xmlns='%s'><items node='%s'%s>%s</items></pubsub>"
              % (PUBSUB_NS, node, attr, body), to=owner)


def item_ids(result):
    its = result.find(q(PUBSUB_NS, "pubsub")).find(q(PUBSUB_NS, "items"))
    return [i.get("id") for i in its.findall(q(PUBSUB_NS, "item"))]


def is_event(node=None, owner=None):
    def pred(el):
        if el.tag != CLIENT + "message":
            return False
        ev = el.find(q(EVENT_NS, "event"))
        if ev is None:
            return False
        if owner is not None and el.get("from") != owner:
            return False
        if node is None:
            return True
        return any(x.get("node") == node for x in ev)
    pred.__doc__ = "a PEP event for node %s from %s" % (node, owner)
    return pred


def event_items(el):
    """[(id, payload element or None for a retract)] of a notification."""
    ev = el.find(q(EVENT_NS, "event"))
    its = ev.find(q(EVENT_NS, "items"))
    out = []
    for x in its:
        if x.tag == q(EVENT_NS, "item"):
            out.append((x.get("id"), x[0] if len(x) else None))
        elif x.tag == q(EVENT_NS, "retract"):
            out.append((x.get("id"), None))
    return out


def error_of(el):
    """(stanza condition, pubsub#errors condition or None)."""
    err = el.find(CLIENT + "error")
    assert err is not None, "expected an error: %s" % summary(el)
    conds = [c for c in err if c.tag.startswith("{urn:ietf:params:xml:ns:xmpp-stanzas}")
             and not c.tag.endswith("}text")]
    ps = [c for c in err if c.tag.startswith("{%s}" % ERRORS_NS)]
    local = lambda t: t.rsplit("}", 1)[-1]  # noqa: E731
    return (local(conds[0].tag) if conds else None, local(ps[0].tag) if ps else None)


def parse(xml):
    return ET.fromstring(xml)
