"""slixclient.py - slixmpp clients for the integration tests.

A test is one coroutine run by run(); inside it, login() gives a connected,
bound, available client or raises LoginFailed. Every wait has a timeout.
The daemon's certificate is self-signed, so verification is off.

    async def scenario():
        alice = await login(server, "alice@localhost", "pw", mech="SCRAM-SHA-256")
        ...
        await alice.close()
    run(scenario())
"""
import asyncio
import ssl

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout  # noqa: F401 (re-exported for tests)

TIMEOUT = 10


class LoginFailed(Exception):
    pass


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password, mech="SCRAM-SHA-256"):
        super().__init__(jid, password, sasl_mech=mech)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0092", "xep_0199", "xep_0202", "xep_0077"):
            self.register_plugin(plugin)
        self.inbox = asyncio.Queue()
        self.stream_errors = []
        self.closed = asyncio.Event()
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("message_error", lambda m: self.inbox.put_nowait(m))
        self.add_event_handler("stream_error", lambda e: self.stream_errors.append(e["condition"]))
        self.add_event_handler("disconnected", lambda *a: self.closed.set())

    async def next_message(self, timeout=TIMEOUT, type=None):
        """The next message (of this type, if given) the client receives."""
        async def wait():
            while True:
                m = await self.inbox.get()
                if type is None or m["type"] == type:
                    return m
        return await asyncio.wait_for(wait(), timeout)

    async def sync(self):
        """A round trip to the server: everything sent before is processed."""
        await self.plugin["xep_0199"].ping(self.boundjid.domain, timeout=TIMEOUT)

    async def close(self, timeout=5):
        if self.transport:
            self.disconnect(wait=1)
            try:
                await asyncio.wait_for(self.closed.wait(), timeout)
            except asyncio.TimeoutError:
                self.abort()


async def login(server, jid, password, mech="SCRAM-SHA-256", direct_tls=False, resource=None,
                presence=True, timeout=TIMEOUT):
    """Connect to server (STARTTLS on c2s_port, or direct TLS on tls_port),
    authenticate, bind, send initial presence. Raises LoginFailed."""
    if resource:
        jid = "%s/%s" % (jid, resource)
    c = Client(jid, password, mech)
    done = asyncio.get_running_loop().create_future()

    def finish(result):
        if not done.done():
            done.set_result(result)

    c.add_event_handler("session_start", lambda e: finish(None))
    c.add_event_handler("failed_all_auth", lambda e: finish("no SASL mechanism worked"))
    c.add_event_handler("connection_failed", lambda e: finish("connection failed: %s" % e))
    c.add_event_handler("disconnected", lambda e: finish("disconnected: %s" % (e,)))
    c.add_event_handler("stream_error", lambda e: finish("stream error: %s" % e["condition"]))
    if direct_tls:
        c.connect(("127.0.0.1", server.tls_port), use_ssl=True, force_starttls=False)
    else:
        c.connect(("127.0.0.1", server.c2s_port), force_starttls=True)
    try:
        err = await asyncio.wait_for(done, timeout)
    except asyncio.TimeoutError:
        err = "no session within %ss" % timeout
    if err:
        c.cancel_connection_attempt()
        c.abort()
        raise LoginFailed("%s: %s" % (jid, err))
    if presence:
        c.send_presence()
        await c.sync()
    return c


async def can_login(server, jid, password, **kw):
    try:
        c = await login(server, jid, password, **kw)
    except LoginFailed:
        return False
    await c.close()
    return True


def run(coro, timeout=60):
    """Run one test scenario with an overall bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
