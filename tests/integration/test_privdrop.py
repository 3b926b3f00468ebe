"""test_privdrop.py - started as root, starlingd gives root up after binding.

The issue: "when started as root the daemon drops to an unprivileged user
after binding its ports". With `user = starling` the daemon opens its
listeners and admin socket as root, hands its data directory and the files
it writes there to that user, and becomes it for good (server.c,
drop_privileges). A user that does not exist is a warning with the command
that creates it, never a failed start.

The other tests set `user = root` (conftest.py), because their data
directories are 0700 root-owned /tmp/st-it-* directories that the dropped
user could not traverse; here the directory is made traversable first.
"""
import os
import pwd
import signal

import pytest

from rawxmpp import RawClient

PW = "privdrop pw"


def running_as_root():
    return os.geteuid() == 0


def starling_user():
    try:
        return pwd.getpwnam("starling")
    except KeyError:
        return None


def ids(pid):
    """(uids, gids, groups) of a process from /proc/PID/status."""
    uids = gids = groups = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Uid":
                uids = [int(x) for x in rest.split()]
            elif key == "Gid":
                gids = [int(x) for x in rest.split()]
            elif key == "Groups":
                groups = [int(x) for x in rest.split()]
    return uids, gids, groups


def can_login(server, user, resource):
    c = RawClient(server.c2s_port, domain=server.domain)
    try:
        return c.login(user, PW, resource=resource)
    finally:
        c.close()


needs_root = pytest.mark.skipif(not running_as_root(), reason="privilege drop needs root")


@needs_root
def test_privdrop_root_daemon_runs_as_starling_after_binding(starling_factory):
    pw = starling_user()
    if pw is None:
        pytest.skip("no system user 'starling': run scripts/deps.sh "
                    "(adduser --system --group --no-create-home starling)")
    s = starling_factory(start=False, user="starling")
    # The parent of everything the daemon opens by path must be traversable
    # by the user: mkdtemp made it 0700 root.
    os.chmod(s.dir, 0o711)
    s.start()
    assert s.wait_log(r"dropped root privileges: running as user starling"), s.log()

    # real, effective, saved and file-system IDs: all of them, or a bug
    # could setuid(0) its way back
    uids, gids, groups = ids(s.pid)
    assert uids == [pw.pw_uid] * 4, uids
    assert gids == [pw.pw_gid] * 4, gids
    assert 0 not in groups, groups

    # the data directory and the files the daemon writes are the user's now
    for name in ("", "starling.db", "starling.db-wal", "starling.db-shm", "cert.pem", "key.pem",
                 "admin.sock"):
        path = os.path.join(s.dir, name)
        if name.endswith(("-wal", "-shm")) and not os.path.exists(path):
            continue  # SQLite may not have made them yet
        assert os.lstat(path).st_uid == pw.pw_uid, path
    assert "cannot traverse" not in s.log() and "not readable by user" not in s.log(), s.log()

    # it still works: storage (as the user) and a login
    s.adduser("alice", PW)
    assert can_login(s, "alice", "before").endswith("/before")

    # SIGHUP re-reads the config, the certificate and the key as the user
    mark = s.log_size()
    s.signal(signal.SIGHUP)
    assert s.wait_log(r"reloaded: 1 hosts", since=mark), s.log()[mark:]
    assert "reload failed" not in s.log()[mark:], s.log()[mark:]
    assert can_login(s, "alice", "after").endswith("/after")

    # and the admin socket, which the user owns, still answers root
    assert "sessions" in s.ctl("status").stdout


@needs_root
def test_privdrop_missing_user_warns_and_keeps_running_as_root(starling_factory):
    s = starling_factory(user="no-such-user-st")
    assert s.wait_log(r"user 'no-such-user-st' does not exist"), s.log()
    assert "adduser --system --group --no-create-home no-such-user-st" in s.log()
    uids, _, _ = ids(s.pid)
    assert uids == [0] * 4, uids
    s.adduser("bob", PW)
    assert can_login(s, "bob", "root").endswith("/root")


@needs_root
def test_privdrop_user_root_means_no_drop(starling_factory):
    s = starling_factory()  # conftest's user = root
    assert s.wait_log(r"running as root \(user = root\)"), s.log()
    uids, _, _ = ids(s.pid)
    assert uids == [0] * 4, uids
