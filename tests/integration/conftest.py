"""conftest.py - run the real starlingd on loopback for the integration tests.

Every test that takes the `starling` fixture gets its own daemon: free
loopback ports, a config written into a fresh data directory, stderr to a log
file. The config lives in the test (nginx-tests style): a test that needs
other settings asks `starling_factory(handshake_timeout=2)` for its own
daemon instead.

On teardown the daemon gets SIGTERM (by PID, never by name) and must exit 0
within a bounded time; under an ASan/UBSan build any sanitizer report in the
log fails the test as well. When a test fails, the daemon's log is attached
to the report.

The binaries come from $STARLING_BUILD (default build/), so the same tests run
against build-asan/. The self-signed certificate the daemon generates on its
first start is copied into later data directories, so only one daemon per
test session pays for key generation.
"""
import atexit
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.abspath(os.path.join(ROOT, os.environ.get("STARLING_BUILD", "build")))
STARLINGD = os.path.join(BUILD, "starlingd")
STARLINGCTL = os.path.join(BUILD, "starlingctl")
DOMAIN = "localhost"

# Sanitizer reports that fail a test when they show up in the daemon log.
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|"
    r"SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer)|runtime error: ")


def is_sanitized(path=STARLINGD):
    """True if the binary was built with -fsanitize=address."""
    try:
        with open(path, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


ASAN = is_sanitized()
# Bounds for every wait; sanitized builds start and stop more slowly.
SLOW = 3 if ASAN else 1
START_TIMEOUT = 15 * SLOW
# How far RSS may stay above its baseline after a hostile peer is gone. ASan
# keeps freed blocks in its quarantine (resident by design), so it gets more;
# real leaks are LeakSanitizer's job there.
RSS_SLACK_KIB = 5 * 1024 if not ASAN else 32 * 1024
STOP_TIMEOUT = 10 * SLOW


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together so they
    differ; a small race with other processes remains, as everywhere)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def preload_env(shim, **variables):
    """The environment that loads build/tests/SHIM.so into the daemon
    (tests/integration/preload/), with the shim's variables."""
    path = os.path.join(BUILD, "tests", shim + ".so")
    if not os.path.exists(path):
        pytest.fail("%s is missing: run make" % path)
    env = {"LD_PRELOAD": path}
    if ASAN:  # the sanitizer's runtime is linked in, not first in the preload list
        env["ASAN_OPTIONS"] = sanitizer_env()["ASAN_OPTIONS"] + ":verify_asan_link_order=0"
    env.update({k: str(v) for k, v in variables.items()})
    return env


def sanitizer_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=23")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=24")
    return env


class Starling:
    """One running starlingd and what a test needs to talk to it."""

    _cert_cache = None  # (cert.pem, key.pem) from the first daemon of the session

    def __init__(self, settings=None, host_settings=None, hosts=None, env=None):
        self.env = env or {}  # added to the daemon's environment
        self.dir = tempfile.mkdtemp(prefix="st-it-", dir="/tmp")  # short: unix socket path
        self.c2s_port, self.tls_port = free_ports(2)
        self.config = os.path.join(self.dir, "starling.conf")
        self.log_path = os.path.join(self.dir, "starlingd.log")
        self.admin_socket = os.path.join(self.dir, "admin.sock")
        self.domain = DOMAIN
        self.proc = None
        self._log = None
        self.write_config(settings or {}, host_settings or {}, hosts)
        if Starling._cert_cache:
            for src, name in zip(Starling._cert_cache, ("cert.pem", "key.pem")):
                shutil.copy(src, os.path.join(self.dir, name))

    # -- config -------------------------------------------------------------

    def write_config(self, settings, host_settings, hosts=None):
        glob = {
            "data_dir": self.dir,
            "bind": "127.0.0.1",
            "c2s_ports": self.c2s_port,
            "c2s_tls_ports": self.tls_port,
            "admin_socket": self.admin_socket,
            "log_level": "debug",
            "user": "root",  # /tmp/st-it-* is 0700 root: a dropped user could not use it (test_privdrop.py)
        }
        glob.update(settings)
        # No "modules" line: the host gets the server's default modules
        # (everything built in), as a new admin's config would.
        host = {
            "register.allow": "true",
        }
        host.update(host_settings)
        lines = ["# written by tests/integration/conftest.py"]
        lines += ["%s = %s" % (k, v) for k, v in glob.items() if v is not None]
        for name in hosts or [DOMAIN]:
            lines.append("[host %s]" % name)
            lines += ["%s = %s" % (k, v) for k, v in host.items() if v is not None]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")

    # -- process ------------------------------------------------------------

    def start(self):
        if not os.access(STARLINGD, os.X_OK):
            pytest.fail("%s is missing: run make %s/starlingd" % (STARLINGD, os.path.basename(BUILD)))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([STARLINGD, "-c", self.config], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(sanitizer_env(), **self.env), cwd=self.dir)
        self.wait_listening(self.c2s_port)
        self.wait_listening(self.tls_port, tls=True)
        if Starling._cert_cache is None:
            cert, key = (os.path.join(self.dir, n) for n in ("cert.pem", "key.pem"))
            if os.path.exists(cert) and os.path.exists(key):
                cache = tempfile.mkdtemp(prefix="st-it-cert-", dir="/tmp")
                atexit.register(shutil.rmtree, cache, True)
                Starling._cert_cache = (shutil.copy(cert, cache), shutil.copy(key, cache))
        return self

    def wait_listening(self, port, timeout=START_TIMEOUT, tls=False):
        """Until port accepts (with a TLS handshake for direct TLS ports, so
        the probe does not look like a failed client in the log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail("starlingd exited with %s before listening on %d\n%s"
                            % (self.proc.returncode, port, self.log()))
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    if tls:
                        ctx = ssl.create_default_context()
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                        ctx.wrap_socket(sock, server_hostname=self.domain).close()
                    return
            except OSError:
                time.sleep(0.05)
        pytest.fail("starlingd did not listen on port %d within %ss\n%s" % (port, timeout, self.log()))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Exit code, or None if it did not exit in time."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """SIGTERM, wait, and return a list of problems (empty = clean)."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            rc = self.wait_exit()
            if rc is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT)
                problems.append("starlingd ignored SIGTERM for %ss (killed)" % STOP_TIMEOUT)
            elif rc != 0:
                problems.append("starlingd exited with %d after SIGTERM" % rc)
        elif self.proc.returncode != 0 and not getattr(self, "expect_exit", False):
            problems.append("starlingd died during the test with exit code %d" % self.proc.returncode)
        if self._log:
            self._log.close()
            self._log = None
        m = SANITIZER_RE.search(self.log())
        if m:
            problems.append("sanitizer report in the log: %r" % m.group(0))
        return problems

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def wait_log(self, pattern, timeout=5 * SLOW, since=0):
        """Wait until the log (from byte offset since) matches pattern."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            if rx.search(self.log()[since:]):
                return True
            time.sleep(0.05)
        return False

    def ctl(self, *args, input=None, timeout=20 * SLOW, check=True):
        """Run starlingctl -c CONFIG ARGS...; returns the CompletedProcess."""
        r = subprocess.run([STARLINGCTL, "-c", self.config] + list(args), input=input,
                           capture_output=True, text=True, timeout=timeout,
                           env=sanitizer_env(), cwd=self.dir)
        if check and r.returncode != 0:
            pytest.fail("starlingctl %s failed (%d):\n%s%s"
                        % (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def adduser(self, jid, password):
        if "@" not in jid:
            jid = "%s@%s" % (jid, self.domain)
        return self.ctl("adduser", jid, input=password + "\n")

    def rss_kib(self):
        """Resident set size of the daemon in KiB, from /proc/PID/status."""
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS for pid %d" % self.proc.pid)

    def open_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))


@pytest.fixture
def starling_factory(request):
    """starling_factory(settings..., host={...}, hosts=[...], env={...}) -> started Starling.

    Keyword arguments are global config keys (None removes a default);
    host= holds keys for the [host] section; env= is added to the daemon's
    environment."""
    servers = []
    request.node._starling_servers = servers

    def make(host=None, hosts=None, start=True, env=None, **settings):
        s = Starling(settings, host, hosts, env)
        servers.append(s)
        return s.start() if start else s

    yield make
    problems = []
    for s in servers:
        problems += s.stop()
    if problems:
        pytest.fail("; ".join(problems) + "\n--- starlingd log ---\n" + servers[-1].log()[-20000:],
                    pytrace=False)
    for s in servers:
        s.cleanup()


@pytest.fixture
def starling(starling_factory):
    """A daemon with the default test config (STARTTLS + direct TLS, one host
    'localhost' with disco version ping time register, register.allow = true)."""
    return starling_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    servers = getattr(item, "_starling_servers", None)
    if rep.failed and servers and call.when == "call":
        for i, s in enumerate(servers):
            rep.sections.append(("starlingd log #%d (%s)" % (i, s.log_path), s.log()[-20000:]))


def pytest_report_header(config):
    return "starling binaries: %s%s" % (BUILD, " (ASan/UBSan)" if ASAN else "")
