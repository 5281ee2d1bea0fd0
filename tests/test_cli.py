"""
Tests of the C{mdpy} command (L{mdpy.cli}).
"""

import io
import json
import os
import re
import subprocess

import pytest

from mdpy.cli import main
from mdpy.backends.files import openDirectory
from mdpy.backends.files.maildir import MaildirStore
from mdpy.datadir import DataDir
from tests import test_relay
from tests.server import mdpyCommand


class CLI:
    def __init__(self, tmp_path):
        self.config = tmp_path / "mdpy.ini"
        self.config.write_text("[server]\ndata_dir = data\nhostname = mx.example.test\n")
        self.datadir = DataDir(str(tmp_path / "data"))

    def __call__(self, *args, stdin=""):
        out, err = io.StringIO(), io.StringIO()
        status = main(["-c", str(self.config)] + list(args), out, io.StringIO(stdin), err)
        return status, out.getvalue(), err.getvalue()

    def ok(self, *args, stdin=""):
        status, out, err = self(*args, stdin=stdin)
        assert (status, err) == (0, ""), err
        return out

    def fails(self, *args, stdin=""):
        status, out, err = self(*args, stdin=stdin)
        assert status == 1
        assert err.startswith("mdpy: ") and err.count("\n") == 1, err
        return err


@pytest.fixture
def cli(tmp_path):
    return CLI(tmp_path)


def test_domains(cli):
    cli.ok("domain", "add", "Example.TEST")
    cli.ok("domain", "add", "other.test")
    assert cli.ok("domain", "list") == "example.test\nother.test\n"
    assert "exists" in cli.fails("domain", "add", "example.test")
    assert cli.fails("domain", "add", "not a domain")
    cli.ok("domain", "del", "other.test")
    assert cli.ok("domain", "list") == "example.test\n"
    assert cli.fails("domain", "del", "other.test")


def test_users(cli):
    cli.ok("domain", "add", "example.test")
    assert cli.ok("user", "add", "Joe@example.test", "--password", "pw1-secret") == "added user joe@example.test\n"
    cli.ok("user", "add", "ann@example.test", stdin="pw2-secret\n")
    assert cli.ok("user", "list") == "ann@example.test\njoe@example.test\n"
    assert os.path.isdir(os.path.join(cli.datadir.mailRoot, "example.test", "joe", "new"))
    directory = openDirectory(cli.datadir)
    assert directory.getSecrets("ann@example.test")["password"].startswith("$scrypt$")
    assert "exists" in cli.fails("user", "add", "joe@example.test", "--password", "x-long-enough")  # duplicate
    cli.fails("user", "add", "bad address@example.test", "--password", "x-long-enough")
    assert "no such domain" in cli.fails("user", "add", "x@unknown.test", "--password", "x-long-enough")
    cli.fails("user", "add", "y@example.test", stdin="")  # no password on stdin
    assert cli.ok("user", "passwd", "joe@example.test", stdin="new-password\n") == (
        "changed the password of joe@example.test\n"
    )
    from mdpy.auth.passwords import verifyPassword

    assert verifyPassword("new-password", directory.getSecrets("joe@example.test")["password"])
    assert cli.ok("user", "disable", "joe@example.test").startswith("disabled user joe@example.test: ")
    assert directory.getSecrets("joe@example.test") is None
    assert cli.ok("user", "enable", "joe@example.test").startswith("enabled user joe@example.test: ")
    assert directory.getSecrets("joe@example.test") is not None
    cli.ok("user", "del", "joe@example.test")
    assert cli.ok("user", "list") == "ann@example.test\n"
    assert not os.path.exists(os.path.join(cli.datadir.mailRoot, "example.test", "joe"))
    cli.fails("user", "passwd", "joe@example.test", stdin="x-long-enough\n")


ROLE_ALIASES = (
    "abuse@example.test postmaster@mx.example.test\n"
    "postmaster@example.test postmaster@mx.example.test\n"
)


def test_aliases(cli):
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "a@example.test", "--password", "pw-secret-1")
    cli.ok("user", "add", "b@example.test", "--password", "pw-secret-1")
    assert cli.ok("alias", "add", "Team@example.test", "a@example.test", "b@example.test", "far@remote.test") == (
        "added alias team@example.test a@example.test b@example.test far@remote.test\n"
    )
    assert cli.ok("alias", "list") == ROLE_ALIASES + "team@example.test a@example.test b@example.test far@remote.test\n"
    cli.fails("alias", "add", "team@example.test", "a@example.test")
    cli.fails("alias", "add", "x@nowhere.test", "a@example.test")
    assert cli.ok("alias", "del", "team@example.test") == "deleted alias team@example.test\n"
    assert cli.ok("alias", "list") == ROLE_ALIASES
    cli.fails("alias", "del", "team@example.test")


def test_aliasToMissingLocalUserRefused(cli):
    """
    An alias whose target is in a local domain but is neither a user nor an
    alias would lose mail: it is refused with one line, and nothing is made.
    A target in another domain is remote and taken; so is an alias.
    """
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "a@example.test", "--password", "pw-secret-1")
    err = cli.fails("alias", "add", "team@example.test", "a@example.test", "Ghost@example.test")
    assert err == "mdpy: error: ghost@example.test is neither a user nor an alias of the local domain example.test\n"
    assert cli.ok("alias", "list") == ROLE_ALIASES
    cli.ok("alias", "add", "team@example.test", "a@example.test", "anyone@remote.test")
    cli.ok("alias", "add", "all@example.test", "team@example.test")
    assert openDirectory(cli.datadir).resolve("all@example.test").local == ["a@example.test"]


def test_aliasLoopRefused(cli):
    """
    An alias that would lead back to itself through other aliases is
    refused with one line naming the loop.
    """
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "a@example.test", "--password", "pw-secret-1")
    cli.ok("alias", "add", "one@example.test", "a@example.test")
    cli.ok("alias", "add", "two@example.test", "one@example.test")
    cli.ok("alias", "add", "three@example.test", "two@example.test", "far@remote.test")
    cli.ok("alias", "del", "one@example.test")
    err = cli.fails("alias", "add", "one@example.test", "a@example.test", "three@example.test")
    assert err == (
        "mdpy: error: one@example.test would loop: "
        "one@example.test -> three@example.test -> two@example.test -> one@example.test\n"
    )
    assert "one@example.test" not in dict(openDirectory(cli.datadir).listAliases())
    assert "would loop" in cli.fails("alias", "add", "self@example.test", "self@example.test")


def test_catchAll(cli):
    """
    C{domain catchall D} shows the catch-all, with a target sets it (a
    missing local target is refused, as for an alias), with C{--clear}
    clears it; each says what it did.
    """
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "a@example.test", "--password", "pw-secret-1")
    assert cli.ok("domain", "catchall", "example.test") == "example.test has no catch-all\n"
    assert "neither a user nor an alias" in cli.fails("domain", "catchall", "example.test", "nobody@example.test")
    assert cli.ok("domain", "catchall", "Example.TEST", "A@example.test") == (
        "mail for unknown addresses of example.test now goes to a@example.test\n"
    )
    assert openDirectory(cli.datadir).resolve("anything@example.test").local == ["a@example.test"]
    assert cli.ok("domain", "catchall", "example.test") == "a@example.test\n"
    assert cli.fails("domain", "catchall", "example.test", "a@example.test", "--clear")
    assert cli.ok("domain", "catchall", "example.test", "--clear") == (
        "cleared the catch-all of example.test (was a@example.test)\n"
    )
    assert cli.ok("domain", "catchall", "example.test") == "example.test has no catch-all\n"
    from mdpy.errors import NotFound

    with pytest.raises(NotFound):
        openDirectory(cli.datadir).resolve("anything@example.test")
    assert cli.fails("domain", "catchall", "nowhere.test") == "mdpy: error: no such domain: nowhere.test\n"


def test_check(cli, tmp_path):
    assert cli.ok("check").startswith("configuration ok: ")
    cli.config.write_text("[smtp]\nport = not-a-port\n")
    err = cli.fails("check")
    assert "[smtp] port = not-a-port" in err


def test_checkNamesTheFileAndDataDir(cli, tmp_path):
    assert cli.ok("check") == "configuration ok: %s, data_dir %s\n" % (cli.config, tmp_path / "data")
    cli.config.write_text("[server]\ndata_dir = data\n[domainpop:isp]\nusername = u\npassword = p\n")
    assert cli.fails("check") == "mdpy: error: %s: [domainpop:isp] host is not set; set it, or enabled = no\n" % (
        cli.config,)


@pytest.fixture
def configHome(tmp_path, monkeypatch):
    """
    An environment where the configuration is looked for under
    C{tmp_path}: C{etc/} stands for C{/etc}, C{xdg/} is
    C{$XDG_CONFIG_HOME}.
    """
    monkeypatch.delenv("MDPY_CONFIG", raising=False)
    monkeypatch.setenv("MDPY_SYSCONFDIR", str(tmp_path / "etc"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    return tmp_path


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), out, io.StringIO(), err)
    return status, out.getvalue(), err.getvalue()


def test_initWritesAStarterThatChecks(configHome):
    """
    C{init PATH} writes the chosen values into a commented starter
    configuration (0640, its folder made), which C{check} passes; it never
    overwrites a file.
    """
    path = configHome / "conf" / "mdpy.ini"
    data = configHome / "maildata"
    status, out, err = run("init", "--domain", "example.test", "--hostname", "mx.example.test",
                           "--data-dir", str(data), str(path))
    assert (status, err) == (0, "")
    assert out == "wrote %s (data_dir %s); check it with: mdpy -c %s check\n" % (path, data, path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    text = path.read_text()
    assert "\nhostname = mx.example.test\n" in text and "\ndomain = example.test\n" in text
    assert ";max_recipients = 1000\n" in text
    assert run("-c", str(path), "check") == (0, "configuration ok: %s, data_dir %s\n" % (path, data), "")
    assert not data.exists()
    status, out, err = run("init", "--domain", "other.test", str(path))
    assert (status, out) == (1, "")
    assert err == "mdpy: error: %s exists; not overwritten (edit it, or give another PATH)\n" % (path,)
    assert path.read_text() == text


def test_initAsRootWritesWhereEveryCommandLooks(configHome, monkeypatch):
    """
    Without PATH, as root, C{init} writes C{/etc/mdpy/mdpy.ini} (here under
    C{etc/}), which C{check} then finds without C{-c}.
    """
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert run("check")[1].startswith("configuration ok: <embedded default>, data_dir ")
    status, out, err = run("init", "--data-dir", str(configHome / "data"))
    path = configHome / "etc" / "mdpy" / "mdpy.ini"
    assert (status, err) == (0, "") and out.startswith("wrote %s " % (path,))
    assert run("check") == (0, "configuration ok: %s, data_dir %s\n" % (path, configHome / "data"), "")


def test_initAsAUserWritesUnderXDGConfigHome(configHome, monkeypatch):
    """
    As another user, C{init} writes under C{$XDG_CONFIG_HOME}, with the
    data under C{$XDG_DATA_HOME}.
    """
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    status, out, err = run("init")
    path = configHome / "xdg" / "mdpy" / "mdpy.ini"
    data = configHome / "share" / "mdpy"
    assert (status, err) == (0, "")
    assert out.startswith("wrote %s (data_dir %s)" % (path, data))
    assert run("check") == (0, "configuration ok: %s, data_dir %s\n" % (path, data), "")


def test_initReference(configHome):
    status, out, err = run("init", "--reference")
    assert (status, err) == (0, "")
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "mdpy.ini")) as f:
        assert out == f.read()
    assert not (configHome / "etc").exists() and not (configHome / "xdg").exists()


def test_reloadWithoutAServer(cli, tmp_path):
    """
    C{mdpy reload} with no server running says so and fails; the end-to-end
    tests show it with one (L{tests.test_e2e_reload}).
    """
    err = cli.fails("reload")
    assert err == "mdpy: error: no server is running on %s; it reads %s when it starts\n" % (
        tmp_path / "data", cli.config)


def test_queueAndUnbuiltServices(cli):
    assert cli.ok("queue", "list") == ""
    cli.ok("queue", "flush")
    cli.fails("queue", "del", "ABC")


def test_multipopAccounts(cli):
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "joe@example.test", "--password", "pw-secret-1")
    accountId = cli.ok("multipop", "add", "joe@example.test", "--host", "pop.far.test", "--username", "joe",
                       "--leave-on-server-days", "7", stdin="remote secret\n").strip()
    assert len(accountId) == 8
    listed = cli.ok("multipop", "list")
    assert listed == "%s joe@example.test joe@pop.far.test:110 tls=starttls leave_on_server_days=7\n" % accountId
    assert "remote secret" not in listed
    path = os.path.join(cli.datadir.root, "multipop", "accounts.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path) as f:
        assert "remote secret" in f.read()
    assert "no such user" in cli.fails("multipop", "add", "nobody@example.test", "--host", "h",
                                       "--username", "u", "--password", "p")
    assert "bad host" in cli.fails("multipop", "add", "joe@example.test", "--host", "a b",
                                   "--username", "u", "--password", "p")
    cli.fails("multipop", "del", "nosuch")
    cli.ok("multipop", "del", accountId)
    assert cli.ok("multipop", "list") == ""


def test_multipopHeld(cli):
    """
    C{multipop held} lists what each account (or the one named) keeps for
    the administrator, one line per message, and says when there is none.
    """
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "joe@example.test", "--password", "pw-secret-1")
    accountId = cli.ok("multipop", "add", "joe@example.test", "--host", "h", "--username", "u",
                       "--password", "p").strip()
    assert cli.ok("multipop", "held") == "multipop/joe@example.test/%s: no message held\n" % accountId
    held = os.path.join(cli.datadir.root, "multipop", accountId, "held")
    os.makedirs(held)
    with open(os.path.join(held, "a.eml"), "wb") as f:
        f.write(b"Return-Path: <x@far.test>\r\nSubject: kept\r\n\r\nbody\r\n")
    [line] = cli.ok("multipop", "held", accountId).splitlines()
    assert line.endswith(" | no reason recorded | <x@far.test> | kept | 50 octets | %s" % os.path.join(held, "a.eml"))
    assert "no such MultiPOP account" in cli.fails("multipop", "held", "nosuch")


def test_domainpopErrors(cli, tmp_path):
    assert "no [domainpop:isp]" in cli.fails("domainpop", "run", "isp")
    cli.config.write_text(
        "[server]\ndata_dir = data\nhostname = mx.example.test\n"
        "[domainpop:isp]\nhost = 127.0.0.1\nport = 9\ntls = none\nusername = u\npassword = p\n"
    )
    # The command runs a reactor of its own: in a process of its own here.
    done = subprocess.run(mdpyCommand() + ["-c", str(cli.config), "domainpop", "run", "isp"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Connection refused" in done.stdout and "stopped early" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "no archive" in cli.fails("domainpop", "probe", "isp", "--address", "a@example.test")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli.ok("domainpop", "probe", "isp", "--address", "a@example.test", "--archive", str(empty))
    assert out.strip()


def test_usageErrorExits2(cli):
    status, out, err = cli("user", "frobnicate")
    assert status == 2


def test_consoleScript(tmp_path):
    """The installed command: one line and status 1 for a bad value."""
    config = tmp_path / "bad.ini"
    config.write_text("[smtp]\nport = not-a-port\n")
    done = subprocess.run(mdpyCommand() + ["-c", str(config), "check"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "port = not-a-port" in done.stderr


# --- role addresses (RFC 5321 section 4.5.1, RFC 2142) -----------------------


def test_domainAddMakesRoleAliases(cli):
    """
    C{domain add} makes postmaster@ and abuse@ of the new domain aliases of
    the server's postmaster account and says so; the server's own domain
    gets abuse@ only (its postmaster is the account the first start makes).
    """
    assert cli.ok("domain", "add", "Other.TEST") == (
        "added domain other.test\n"
        "added alias postmaster@other.test postmaster@mx.example.test\n"
        "added alias abuse@other.test postmaster@mx.example.test\n"
    )
    assert cli.ok("domain", "add", "mx.example.test") == (
        "added domain mx.example.test\nadded alias abuse@mx.example.test postmaster@mx.example.test\n"
    )
    assert cli.ok("alias", "list") == (
        "abuse@mx.example.test postmaster@mx.example.test\n"
        "abuse@other.test postmaster@mx.example.test\n"
        "postmaster@other.test postmaster@mx.example.test\n"
    )
    cli.ok("user", "add", "postmaster@mx.example.test", "--password", "pw-secret-1")
    directory = openDirectory(cli.datadir)
    for role in ("postmaster@other.test", "abuse@other.test", "abuse@mx.example.test"):
        assert directory.resolve(role).local == ["postmaster@mx.example.test"]


def test_domainAddKeepsExplicitRoleAddresses(cli):
    """
    A role address that is already a user or an alias, made by the
    administrator, is left alone.
    """
    cli.ok("domain", "add", "other.test")
    cli.ok("alias", "del", "postmaster@other.test")
    cli.ok("user", "add", "postmaster@other.test", "--password", "pw-secret-1")
    cli.ok("alias", "del", "abuse@other.test")
    cli.ok("alias", "add", "abuse@other.test", "postmaster@other.test")
    directory = openDirectory(cli.datadir)
    from mdpy.directory import addRoleAliases

    assert addRoleAliases(directory, "other.test", "postmaster@mx.example.test") == []
    assert directory.getUser("postmaster@other.test") is not None
    assert directory.listAliases() == [("abuse@other.test", ["postmaster@other.test"])]


# --- deleting users and domains ----------------------------------------------


class Terminal(io.StringIO):
    """
    Standard input that says it is a terminal.
    """

    def isatty(self):
        return True


def deliverTo(cli, address, count=1):
    from twisted.internet import defer

    store = MaildirStore(
        cli.datadir.mailRoot, runInThread=lambda f, *a: defer.maybeDeferred(f, *a),
        archiveRoot=cli.datadir.deletedDir,
    )
    for n in range(count):
        store.deliver([(address, "INBOX", [b"Subject: %d\r\n\r\nold mail\r\n" % (n,)])])
    return store


def mailOf(cli, address):
    local, domain = address.split("@")
    path = os.path.join(cli.datadir.mailRoot, domain, local)
    return os.listdir(os.path.join(path, "new")) if os.path.isdir(path) else None


def deletedTrees(cli):
    """
    @return: the paths under C{deleted/<time>/}, relative to C{deleted/}.
    """
    found = []
    root = cli.datadir.deletedDir
    for stamp in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        for domain in sorted(os.listdir(os.path.join(root, stamp))):
            found.append(os.path.join(stamp, domain))
    return found


@pytest.fixture
def populated(cli):
    cli.ok("domain", "add", "example.test")
    for name in ("bob", "ann"):
        cli.ok("user", "add", name + "@example.test", "--password", "pw-secret-1")
    cli.ok("alias", "add", "team@example.test", "bob@example.test", "ann@example.test")
    deliverTo(cli, "bob@example.test", 2)
    return cli


def test_userDelMovesMail(populated):
    cli = populated
    out = cli.ok("user", "del", "Bob@example.test")
    [tree] = deletedTrees(cli)
    kept = os.path.join(cli.datadir.deletedDir, tree, "bob")
    assert out == "deleted user bob@example.test\nmoved %s to %s\n" % (
        os.path.join(cli.datadir.mailRoot, "example.test", "bob"), kept)
    assert re.fullmatch(r"[0-9]{8}T[0-9]{6}Z/example\.test", tree)
    assert len(os.listdir(os.path.join(kept, "new"))) == 2
    assert mailOf(cli, "bob@example.test") is None
    assert openDirectory(cli.datadir).getUser("bob@example.test") is None
    cli.ok("user", "add", "bob@example.test", "--password", "new-secret-1")
    assert mailOf(cli, "bob@example.test") == []
    assert "no such user: carl@example.test" in cli.fails("user", "del", "carl@example.test")


def test_deletionStopsMultipopCollection(populated):
    """
    The remote POP3 accounts of a deleted user (and of a deleted domain's
    users) are removed with their passwords; other users' stay.
    """
    cli = populated
    cli.ok("domain", "add", "other.test")
    cli.ok("user", "add", "eve@other.test", "--password", "pw-secret-1")
    ids = {}
    for user in ("bob@example.test", "ann@example.test", "eve@other.test"):
        ids[user] = cli.ok("multipop", "add", user, "--host", "pop.remote.test", "--username", user.split("@")[0],
                           "--password", "remote").strip()
    out = cli.ok("user", "del", "bob@example.test")
    assert "removed MultiPOP account %s bob@pop.remote.test\n" % (ids["bob@example.test"],) in out
    listed = cli.ok("multipop", "list")
    assert ids["bob@example.test"] not in listed and ids["ann@example.test"] in listed
    out = cli.ok("domain", "del", "example.test")
    assert "removed MultiPOP account %s ann@pop.remote.test\n" % (ids["ann@example.test"],) in out
    assert cli.ok("multipop", "list").split()[:2] == [ids["eve@other.test"], "eve@other.test"]


def test_userDelPurge(populated):
    cli = populated
    out = cli.ok("user", "del", "bob@example.test", "--purge")
    assert out == "deleted user bob@example.test\nremoved %s\n" % (
        os.path.join(cli.datadir.mailRoot, "example.test", "bob"),)
    assert deletedTrees(cli) == []
    assert mailOf(cli, "bob@example.test") is None


def test_domainDelMovesMailUsersAndAliases(populated):
    cli = populated
    cli.ok("domain", "add", "other.test")
    cli.ok("user", "add", "eve@other.test", "--password", "pw-secret-1")
    out = cli.ok("domain", "del", "Example.TEST")
    [tree] = deletedTrees(cli)
    kept = os.path.join(cli.datadir.deletedDir, tree)
    assert out == "deleted domain example.test and its 2 users\nmoved %s to %s\n" % (
        os.path.join(cli.datadir.mailRoot, "example.test"), kept)
    assert sorted(os.listdir(kept)) == ["ann", "bob"]
    assert len(os.listdir(os.path.join(kept, "bob", "new"))) == 2
    directory = openDirectory(cli.datadir)
    assert directory.listDomains() == ["other.test"]
    assert directory.listUsers() == ["eve@other.test"]
    assert [alias for alias, _ in directory.listAliases()] == ["abuse@other.test", "postmaster@other.test"]
    assert mailOf(cli, "eve@other.test") == []
    cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "bob@example.test", "--password", "pw-secret-1")
    assert mailOf(cli, "bob@example.test") == []
    assert "no such domain: example.org" in cli.fails("domain", "del", "example.org")


def test_domainDelPurge(populated):
    cli = populated
    out = cli.ok("domain", "del", "example.test", "--purge", "--yes")
    assert out.endswith("removed %s\n" % (os.path.join(cli.datadir.mailRoot, "example.test"),))
    assert deletedTrees(cli) == []
    assert os.listdir(cli.datadir.mailRoot) == [".mdpy-uidvalidity"]


@pytest.mark.parametrize("command", [
    ("user", "del", "bob@example.test"),
    ("domain", "del", "example.test"),
    ("domain", "del", "example.test", "--purge"),
])
def test_deletionAsksOnATerminal(populated, command):
    """
    On a terminal the command asks first; anything but yes deletes
    nothing and exits 1.  C{--yes} does not ask.
    """
    cli = populated
    out, err = io.StringIO(), io.StringIO()
    status = main(["-c", str(cli.config)] + list(command), out, Terminal("n\n"), err)
    assert status == 1
    fate = ("remove its mail for good" if "--purge" in command
            else "move its mail to %s/" % (cli.datadir.deletedDir,))
    if command[0] == "user":
        question = "Delete user bob@example.test and %s? [y/N] " % (fate,)
    else:
        question = "Delete domain example.test with its 2 users and its aliases, and %s? [y/N] " % (fate,)
    assert out.getvalue() == question
    assert err.getvalue() == "mdpy: error: not confirmed; nothing was deleted\n"
    assert mailOf(cli, "bob@example.test") is not None
    assert openDirectory(cli.datadir).getUser("bob@example.test") is not None

    out = io.StringIO()
    assert main(["-c", str(cli.config)] + list(command), out, Terminal("y\n"), io.StringIO()) == 0
    assert out.getvalue().startswith(question + "deleted ")
    assert mailOf(cli, "bob@example.test") is None

    if command[0] == "domain":
        cli.ok("domain", "add", "example.test")
    cli.ok("user", "add", "bob@example.test", "--password", "pw-secret-1")
    out = io.StringIO()
    assert main(["-c", str(cli.config)] + list(command) + ["--yes"], out, Terminal(""), io.StringIO()) == 0
    assert out.getvalue().startswith("deleted ")


# --- text for people ------------------------------------------------------------


def test_version(tmp_path):
    """
    C{mdpy --version} prints the package's version, as other servers' tools
    do, with no configuration needed.
    """
    from mdpy import __version__

    done = subprocess.run(mdpyCommand() + ["--version"], capture_output=True, text=True, cwd=str(tmp_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "mdpy %s\n" % (__version__,), "")
    assert re.match(r"\d+\.\d+\.\d+\Z", __version__)


def test_userListMarksDisabled(cli):
    """
    C{user list} keeps one address per line and marks a disabled account
    after a space, so the first field is still the address.
    """
    cli.ok("domain", "add", "example.test")
    for name in ("ann", "bob", "eve"):
        cli.ok("user", "add", name + "@example.test", "--password", "pw-secret-1")
    cli.ok("user", "disable", "bob@example.test")
    listing = cli.ok("user", "list")
    assert listing == "ann@example.test\nbob@example.test (disabled)\neve@example.test\n"
    assert [line.split(" ")[0] for line in listing.splitlines()] == openDirectory(cli.datadir).listUsers()
    assert cli.ok("user", "list", "example.test") == listing
    cli.ok("user", "enable", "bob@example.test")
    assert "(disabled)" not in cli.ok("user", "list")


def test_shortPasswordRefused(cli):
    """
    C{user add} and C{user passwd} refuse a password shorter than C{[auth]
    min_password_length} (10 by default) with one line and status 1, and
    change nothing; the key sets the length.
    """
    cli.ok("domain", "add", "example.test")
    err = cli.fails("user", "add", "bob@example.test", "--password", "123456789")
    assert err == "mdpy: error: the password is too short: at least 10 characters ([auth] min_password_length)\n"
    err2 = cli.fails("user", "add", "bob@example.test", stdin="short\n")
    assert err2 == err
    assert openDirectory(cli.datadir).getUser("bob@example.test") is None
    assert cli.ok("user", "add", "bob@example.test", "--password", "1234567890") == "added user bob@example.test\n"
    assert cli.fails("user", "passwd", "bob@example.test", stdin="tiny\n") == err
    from mdpy.auth.passwords import verifyPassword

    secrets = openDirectory(cli.datadir).getSecrets("bob@example.test")
    assert verifyPassword("1234567890", secrets["password"])
    cli.config.write_text(cli.config.read_text() + "[auth]\nmin_password_length = 4\n")
    cli.ok("user", "passwd", "bob@example.test", stdin="tiny\n")
    assert "at least 4 characters" in cli.fails("user", "add", "eve@example.test", "--password", "abc")


def test_changesSayWhatTheyDid(cli, tmp_path):
    """
    Every command that changes something prints what it did.
    """
    assert cli.ok("domain", "add", "example.test").startswith("added domain example.test\n")
    cli.ok("user", "add", "joe@example.test", "--password", "pw-secret-1")
    accountId = cli.ok("multipop", "add", "joe@example.test", "--host", "h", "--username", "u",
                       "--password", "p").strip()
    assert cli.ok("multipop", "del", accountId) == "removed MultiPOP account %s\n" % (accountId,)
    queueDir = cli.datadir.queueDir
    for sub in ("env", "msg"):
        os.makedirs(os.path.join(queueDir, sub), exist_ok=True)
        with open(os.path.join(queueDir, sub, "Q1"), "w") as f:
            f.write("{}")
    assert cli.ok("queue", "del", "Q1") == "deleted queued message Q1\n"
    assert cli.ok("user", "del", "joe@example.test", "--purge").startswith("deleted user joe@example.test\n")
    assert cli.ok("domain", "del", "example.test").startswith("deleted domain example.test ")


@pytest.mark.parametrize("args, stdin, message", [
    (["domain", "add", "not a domain"], "", "bad domain"),
    (["domain", "del", "nowhere.test", "--yes"], "", "no such domain: nowhere.test"),
    (["domain", "catchall", "nowhere.test", "a@nowhere.test"], "", "no such domain"),
    (["user", "add", "no-at-sign", "--password", "pw-secret-1"], "", "not an address"),
    (["user", "add", "a@nowhere.test", "--password", "pw-secret-1"], "", "no such domain: nowhere.test"),
    (["user", "list", "not a domain"], "", "bad domain"),
    (["user", "del", "ghost@example.test", "--yes"], "", "no such user: ghost@example.test"),
    (["user", "passwd", "ghost@example.test"], "pw-secret-1\n", "no such user: ghost@example.test"),
    (["user", "disable", "ghost@example.test"], "", "no such user: ghost@example.test"),
    (["user", "enable", "@example.test"], "", "not an address"),
    (["alias", "add", "x@nowhere.test", "a@remote.test"], "", "no such domain: nowhere.test"),
    (["alias", "del", "ghost@example.test"], "", "no such alias: ghost@example.test"),
    (["queue", "del", "../etc"], "", "no such queued message"),
    (["domainpop", "run", "isp"], "", "no [domainpop:isp] section"),
    (["odmr", "release", "isp"], "", "no [odmr-client:isp] section"),
    (["multipop", "add", "ghost@example.test", "--host", "h", "--username", "u", "--password", "p"], "",
     "no such user"),
    (["multipop", "del", "nosuch"], "", "no such MultiPOP account: nosuch"),
    (["dkim", "show", "example.test"], "", "no DKIM key for example.test"),
    (["dkim", "generate", "example.test", "--bits", "12"], "", "key size"),
])
def test_errorsAreOneLine(cli, args, stdin, message):
    """
    Bad input to any command is one C{mdpy: error:} line and status 1, never
    a traceback.
    """
    cli.ok("domain", "add", "example.test")
    err = cli.fails(*args, stdin=stdin)
    assert err.startswith("mdpy: error: ") and message in err, err
    assert "Traceback" not in err and "Error(" not in err


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("not an ini file", "no section headers"),
    ("[smtp]\nport = 99999999999999999999x\n", "[smtp] port"),
    ("[auth]\nmin_password_length = -1\n", "[auth] min_password_length = -1"),
])
def test_configErrorsAreOneLine(tmp_path, content, message):
    """
    A configuration that cannot be read or parsed stops every command with
    one C{mdpy: error:} line, from the installed command too.
    """
    config = tmp_path / "mdpy.ini"
    if content is not None:
        config.write_text(content)
    done = subprocess.run(mdpyCommand() + ["-c", str(config), "user", "list"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("mdpy: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr


def test_unexpectedFailureIsOneLine(cli, monkeypatch):
    """
    Even a failure that is a bug is one line, naming what went wrong.
    """
    from mdpy.backends.files.directory import SQLiteDirectory

    def broken(self, domain=None):
        raise KeyError("users")

    monkeypatch.setattr(SQLiteDirectory, "listUsers", broken)
    assert cli.fails("user", "list") == "mdpy: error: unexpected KeyError: 'users'\n"


class QueueListAfterDNSTimeoutTests(test_relay.RelayTestCase):
    """
    C{queue list} after a relay attempt whose MX lookup timed out against a
    loopback DNS server that never answers.
    """

    async def test_noReprForDNSTimeout(self):
        from twisted.internet import reactor

        from mdpy.delivery.mx import MXResolver, makeResolver
        from mdpy.backends.files.queue import SpoolQueue
        from mdpy.delivery.relay import Relay

        root = self.tempDir()
        self.queue = SpoolQueue(DataDir(os.path.join(root, "data")).queueDir, reactor=reactor, clock=self.clock)
        self.dns.failWith("dest.test", "timeout")
        resolver = MXResolver(makeResolver(reactor, [self.dns.nameserver], timeout=(0.2,)), clock=self.clock)
        relay = Relay(self.queue, resolver, self.bounces, "relay.example.test", self.settings, reactor, self.clock)
        relay.startService()
        self.addCleanup(relay.stopService)
        self.relay = relay
        entry = await self.enqueue(["a@dest.test"])
        recipient = entry.recipients[0]
        await self.until(lambda: recipient.attempts == 1 and self.idle(), "the failed attempt")
        await self.until(lambda: not entry.lock.locked, "the state saved")

        config = os.path.join(root, "mdpy.ini")
        with open(config, "w") as f:
            f.write("[server]\ndata_dir = data\nhostname = mx.example.test\n")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["-c", config, "queue", "list"], out, io.StringIO(), err), 0, err.getvalue())
        header, line = out.getvalue().splitlines()
        self.assertTrue(header.startswith(entry.id + " "), header)
        self.assertRegex(
            line,
            r"\A    <a@dest\.test> pending attempts=1 status=4\.4\.3 next=\S+ \S+ \(due now\) "
            r"last: DNS lookup of dest\.test timed out\Z",
        )
        self.assertNotRegex(out.getvalue(), r"Query|Error\(|\[")
        # Recorded as text, not turned into text on the way out.
        with open(self.queue.envPath(entry.id)) as f:
            [stored] = json.load(f)["recipients"]
        self.assertEqual(stored["reason"], "DNS lookup of dest.test timed out")


def test_queueListReadsOldReprs(tmp_path):
    """
    A queue state file written by an earlier version, holding the repr of
    a resolver's timeout or of another exception, is listed as text.
    """
    from mdpy.backends.files.queue import readQueue

    cli = CLI(tmp_path)
    queueDir = cli.datadir.queueDir
    for sub in ("env", "msg"):
        os.makedirs(os.path.join(queueDir, sub))
    with open(os.path.join(queueDir, "msg", "OLD1"), "wb") as f:
        f.write(b"Subject: old\r\n\r\nbody\r\n")
    state = {
        "version": 1, "id": "OLD1", "sender": "joe@example.test", "created": 1700000000, "size": 24,
        "recipients": [
            {"address": "a@example.org", "state": "pending", "attempts": 3, "due": 1700003600,
             "status": "4.4.3",
             "reason": "example.org MX lookup failed: TimeoutError([Query(b'example.org', 15, 1)])"},
            {"address": "b@example.net", "state": "pending", "attempts": 1, "due": 1700003600,
             "reason": "cannot connect: SSLError([('SSL routines', '', 'wrong version number')])"},
        ],
    }
    with open(os.path.join(queueDir, "env", "OLD1"), "w") as f:
        json.dump(state, f)
    entries, unreadable = readQueue(queueDir)
    assert unreadable == [], "the crafted state file is not one the queue reads"
    listing = cli.ok("queue", "list")
    assert "last: DNS lookup of example.org timed out\n" in listing
    assert "last: cannot connect: SSL error\n" in listing
    assert "Query" not in listing and "Error(" not in listing


@pytest.mark.parametrize("args", [
    ["domain", "add", "example.test"],
    ["user", "list"],
    ["alias", "list"],
    ["queue", "list"],
    ["multipop", "list"],
    ["dkim", "generate", "example.test"],
])
def test_unusableDataDirIsOneLine(tmp_path, args):
    """
    A data directory that cannot be made (its parent is a file) stops each
    command with one line naming the path and the system's reason.
    """
    (tmp_path / "afile").write_text("")
    cli = CLI(tmp_path)
    cli.config.write_text("[server]\ndata_dir = afile/data\n")
    err = cli.fails(*args)
    assert err.startswith("mdpy: error: %s" % (tmp_path / "afile" / "data",)), err
    assert err.endswith(": Not a directory\n") and "Errno" not in err, err
