// login.mjs - one xmpp.js (@xmpp/client) login for test_xmpp_js.py.
//
//   node login.mjs PORT USER PASSWORD AGENT [TOKEN_IN] [TOKEN_OUT]
//
// Connects with STARTTLS, authenticates with SASL2 (XEP-0388) and binds
// with Bind2 (XEP-0386), as xmpp.js does by default against a server that
// offers them. With TOKEN_IN (a JSON file from an earlier run) it logs in
// with that FAST token (XEP-0484) instead of the password; a token the
// server hands out is written to TOKEN_OUT. Prints one JSON line: what
// happened, for the test to check.
import fs from "node:fs";
import { client, xml } from "@xmpp/client";

const [port, username, password, agent, tokenIn, tokenOut] = process.argv.slice(2);

const xmpp = client({
  service: `xmpp://127.0.0.1:${port}`,
  domain: "localhost",
  username,
  password: password || undefined,
  resource: "xmppjs",
  userAgent: xml("user-agent", { id: agent }, xml("software", {}, "xmpp.js test")),
});

let saved = null;
xmpp.fast.saveToken = async (t) => {
  saved = t;
};
if (tokenIn) {
  const t = JSON.parse(fs.readFileSync(tokenIn, "utf8"));
  xmpp.fast.fetchToken = async () => t;
}

function report(result, code) {
  console.log(JSON.stringify(result));
  process.exit(code);
}

const timer = setTimeout(() => report({ ok: false, why: "timeout" }, 2), 20000);
xmpp.on("error", (e) => console.error("xmpp.js error:", e.condition || e.message));

xmpp.on("online", async (jid) => {
  try {
    // one round trip on the bound stream proves it works without a restart
    await xmpp.iqCaller.request(
      xml("iq", { type: "get", to: "localhost" }, xml("ping", { xmlns: "urn:xmpp:ping" })),
    );
    if (tokenOut && saved) fs.writeFileSync(tokenOut, JSON.stringify(saved));
    clearTimeout(timer);
    const sm = xmpp.streamManagement.enabled;
    await xmpp.stop();
    report({ ok: true, jid: jid.toString(), sm, token: saved !== null }, 0);
  } catch (e) {
    report({ ok: false, why: String(e.condition || e.message) }, 1);
  }
});

xmpp.start().catch((e) => report({ ok: false, why: String(e.condition || e.message) }, 1));
