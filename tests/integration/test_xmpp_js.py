"""test_xmpp_js.py - xmpp.js (@xmpp/client, npm) logs in with SASL2 + Bind2,
then again with the FAST token it was given (XEP-0388, XEP-0386, XEP-0484).

The packages live in tests/integration/js (package.json + package-lock.json;
scripts/deps.sh runs `npm ci` there). The daemon's certificate is
self-signed, so only the node process gets NODE_TLS_REJECT_UNAUTHORIZED=0.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, SLOW

JS = os.path.join(ROOT, "tests", "integration", "js")
PW = "xmpp.js pw"
AGENT = "5b9d7c1e-0d3f-4a51-9f0e-1c2b3a4d5e6f"


def run_login(starling, *args):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    if not os.path.isdir(os.path.join(JS, "node_modules", "@xmpp", "client")):
        pytest.fail("xmpp.js is not installed: run scripts/deps.sh (npm ci --prefix tests/integration/js)")
    env = dict(os.environ, NODE_TLS_REJECT_UNAUTHORIZED="0", NODE_NO_WARNINGS="1")
    r = subprocess.run([node, "login.mjs", str(starling.c2s_port)] + list(args), cwd=JS, env=env,
                       capture_output=True, text=True, timeout=60 * SLOW)
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert lines, "no result from xmpp.js (exit %d)\n%s\n%s" % (r.returncode, r.stdout, r.stderr)
    return json.loads(lines[-1]), r


def test_xep0388_xep0386_xep0484_xmpp_js_sasl2_bind2_then_fast_token(starling, tmp_path):
    starling.adduser("jsuser", PW)
    token = str(tmp_path / "token.json")

    # 1: password, SASL2 + Bind2 (+ SM inline); xmpp.js asks for a token
    res, r = run_login(starling, "jsuser", PW, AGENT, "", token)
    assert res["ok"], (res, r.stderr, starling.log()[-4000:])
    assert res["jid"].startswith("jsuser@localhost/xmppjs/"), res
    assert res["token"] and os.path.exists(token), res
    log = starling.log()
    assert re.search(r"authenticated as jsuser@localhost \(SCRAM-SHA-1, SASL2\)", log), log[-3000:]
    assert "bound jsuser@localhost/xmppjs/" in log

    # 2: no password at all, only the token
    since = starling.log_size()
    res, r = run_login(starling, "jsuser", "", AGENT, token, "")
    assert res["ok"], (res, r.stderr, starling.log()[-4000:])
    assert res["jid"].startswith("jsuser@localhost/xmppjs/"), res
    assert re.search(r"authenticated as jsuser@localhost \(HT-SHA-256-NONE, SASL2\)",
                     starling.log()[since:]), starling.log()[since:]
