"""
Tests for L{mdpy.directory} and L{mdpy.backends.files.directory}.
"""

import os
import sqlite3
import subprocess
import sys

import pytest
from zope.interface.verify import verifyObject

from mdpy.auth.passwords import cramMD5Secret, verifyPassword
from mdpy.directory import Resolution, User
from mdpy.backends.files import directory as sqlitedirectory
from mdpy.backends.files.directory import MAX_ALIAS_DEPTH, SCHEMA_VERSION, SQLiteDirectory
from mdpy.errors import Disabled, Exists, InvalidInput, NotFound, PermanentFailure
from mdpy.interfaces import IDirectory


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "directory.sqlite")


@pytest.fixture
def directory(path):
    d = SQLiteDirectory(path)
    yield d
    d.close()


@pytest.fixture
def populated(directory):
    """
    Two local domains with a few users.
    """
    directory.addDomain("example.com")
    directory.addDomain("example.org")
    for address in ["alice@example.com", "bob@example.com", "carol@example.org"]:
        directory.addUser(address, "secret")
    return directory


# --- value classes ----------------------------------------------------------


def test_userEquality():
    a = User("a@example.com", "example.com", "a", True)
    assert a == User("a@example.com", "example.com", "a", 1)
    assert a != User("a@example.com", "example.com", "a", False)
    assert a != User("a@example.com", "example.com", "a", True, "0123")
    assert a != "a@example.com"
    assert "a@example.com" in repr(a)
    assert "disabled" in repr(User("a@x.y", "x.y", "a", False))


def test_resolutionEquality():
    r = Resolution(["a@example.com"], ["b@remote.org"])
    assert r == Resolution(local=["a@example.com"], remote=["b@remote.org"])
    assert r != Resolution(local=["a@example.com"])
    assert r != Resolution(["b@remote.org"], ["a@example.com"])
    assert Resolution() == Resolution([], [])
    assert Resolution(["a@example.com"], caught=["a@example.com"]) != Resolution(["a@example.com"])
    assert repr(Resolution(["a@example.com"], caught=["a@example.com"])) == (
        "Resolution(local=['a@example.com'], remote=[], caught=['a@example.com'])"
    )
    assert repr(r) == (
        "Resolution(local=['a@example.com'], remote=['b@remote.org'])"
    )
    tagged = Resolution(["a@example.com"], detail="lists")
    assert tagged != Resolution(["a@example.com"])
    assert repr(tagged) == "Resolution(local=['a@example.com'], remote=[], detail='lists')"


# --- the file ---------------------------------------------------------------


def test_interface(directory):
    assert verifyObject(IDirectory, directory)


def test_schemaAndPragmas(directory, path):
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {
            row[0]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        assert {"domains", "users", "aliases"} <= tables
    finally:
        db.close()
    assert directory._read("PRAGMA busy_timeout")[0][0] == 5000


def test_reopenKeepsData(path):
    first = SQLiteDirectory(path)
    first.addDomain("example.com")
    first.close()
    second = SQLiteDirectory(path)
    assert second.listDomains() == ["example.com"]
    second.close()


def test_newerSchemaRefused(path):
    SQLiteDirectory(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = %d" % (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(PermanentFailure):
        SQLiteDirectory(path)


def test_changesSeenByAnotherInstance(path):
    """
    What one instance (the C{mdpy} command) commits, another (the running
    server) sees on its very next call.
    """
    server = SQLiteDirectory(path)
    cli = SQLiteDirectory(path)
    try:
        assert not server.hasDomain("example.com")
        cli.addDomain("example.com")
        assert server.hasDomain("example.com")
        with pytest.raises(NotFound):
            server.resolve("alice@example.com")
        cli.addUser("alice@example.com", "pw")
        assert server.resolve("alice@example.com") == Resolution(["alice@example.com"])
        assert server.getSecrets("alice@example.com") is not None
        cli.setEnabled("alice@example.com", False)
        with pytest.raises(Disabled):
            server.resolve("alice@example.com")
        assert server.getSecrets("alice@example.com") is None
        cli.addAlias("team@example.com", ["x@remote.org"])
        assert server.resolve("team@example.com") == Resolution([], ["x@remote.org"])
        cli.removeDomain("example.com")
        assert server.listDomains() == []
        assert server.resolve("team@example.com") == Resolution(
            [], ["team@example.com"]
        )
    finally:
        server.close()
        cli.close()


# --- domains ----------------------------------------------------------------


def test_domains(directory):
    assert directory.listDomains() == []
    directory.addDomain("Example.ORG.")
    directory.addDomain("example.com")
    assert directory.listDomains() == ["example.com", "example.org"]
    assert directory.hasDomain("EXAMPLE.org")
    assert not directory.hasDomain("example.net")


def test_addDomainExists(directory):
    directory.addDomain("example.com")
    with pytest.raises(Exists):
        directory.addDomain("EXAMPLE.COM")


@pytest.mark.parametrize(
    "name", ["", "a..b", "-bad.example", "under_score.example", "a b", None, b"x.y"]
)
def test_addDomainInvalid(directory, name):
    with pytest.raises(InvalidInput):
        directory.addDomain(name)
    assert directory.listDomains() == []


def test_hasDomainInvalid(directory):
    with pytest.raises(InvalidInput):
        directory.hasDomain("a..b")


def test_removeDomain(populated):
    populated.addAlias("sales@example.com", ["alice@example.com", "carol@example.org"])
    populated.addAlias("info@example.org", ["alice@example.com"])
    populated.removeDomain("example.com")
    assert populated.listDomains() == ["example.org"]
    assert populated.listUsers() == ["carol@example.org"]
    assert populated.listAliases() == [("info@example.org", ["alice@example.com"])]
    assert populated.getUser("alice@example.com") is None
    # Now a remote domain.
    assert populated.resolve("alice@example.com") == Resolution(
        [], ["alice@example.com"]
    )


def test_removeDomainNotFound(directory):
    with pytest.raises(NotFound):
        directory.removeDomain("example.com")


def test_catchAll(populated):
    with pytest.raises(NotFound):
        populated.resolve("nobody@example.com")
    populated.setCatchAll("example.com", "Alice@Example.com")
    assert populated.getCatchAll("example.com") == "alice@example.com"
    assert populated.resolve("nobody@example.com") == Resolution(
        ["alice@example.com"], caught=["alice@example.com"]
    )
    # Existing users are not caught.
    assert populated.resolve("bob@example.com") == Resolution(["bob@example.com"])
    # Other domains are not affected.
    with pytest.raises(NotFound):
        populated.resolve("nobody@example.org")
    populated.setCatchAll("example.com", None)
    assert populated.getCatchAll("example.com") is None
    with pytest.raises(NotFound):
        populated.resolve("nobody@example.com")


def test_catchAllRemoteAndAlias(populated):
    populated.addAlias("all@example.org", ["carol@example.org", "x@remote.org"])
    populated.setCatchAll("example.com", "all@example.org")
    assert populated.resolve("whoever@example.com") == Resolution(
        ["carol@example.org"], ["x@remote.org"], caught=["carol@example.org"]
    )
    # An alias naming the account is not a catch-all.
    populated.addAlias("sales@example.com", ["carol@example.org"])
    assert populated.resolve("sales@example.com") == Resolution(["carol@example.org"])


def test_catchAllToItsOwnDomain(populated):
    """
    A catch-all pointing at a missing address of its own domain does not loop.
    """
    populated.setCatchAll("example.com", "missing@example.com")
    with pytest.raises(NotFound):
        populated.resolve("anyone@example.com")


def test_catchAllErrors(populated):
    with pytest.raises(NotFound):
        populated.setCatchAll("example.net", "alice@example.com")
    with pytest.raises(InvalidInput):
        populated.setCatchAll("example.com", "not an address")
    with pytest.raises(NotFound):
        populated.getCatchAll("example.net")


# --- users ------------------------------------------------------------------


def test_users(populated):
    assert populated.listUsers() == [
        "alice@example.com",
        "bob@example.com",
        "carol@example.org",
    ]
    assert populated.listUsers("example.org") == ["carol@example.org"]
    assert populated.listUsers("EXAMPLE.COM") == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert populated.listUsers("example.net") == []


def test_addUserNormalises(populated):
    populated.addUser("Dave@EXAMPLE.com", "pw")
    user = populated.getUser("dave@example.com")
    assert user == User("dave@example.com", "example.com", "dave", True, user.accountId)
    assert populated.getUser("DAVE@example.COM").address == "dave@example.com"
    with pytest.raises(Exists):
        populated.addUser("dave@example.com", "pw")


def test_accountIdIsTheAccountNotTheAddress(populated):
    """
    A user gets an account id of its own when added; a password change and
    disabling keep it; the same address deleted and added again (also with
    its domain) is another account, with another id.
    """
    first = populated.getUser("alice@example.com").accountId
    assert len(first) == 32 and int(first, 16) >= 0
    assert first != populated.getUser("bob@example.com").accountId
    populated.setPassword("alice@example.com", "new")
    populated.setEnabled("alice@example.com", False)
    populated.setEnabled("alice@example.com", True)
    assert populated.getUser("alice@example.com").accountId == first
    populated.removeUser("alice@example.com")
    populated.addUser("alice@example.com", "secret")
    second = populated.getUser("alice@example.com").accountId
    assert second not in (None, first)
    populated.removeDomain("example.com")
    populated.addDomain("example.com")
    populated.addUser("alice@example.com", "secret")
    assert populated.getUser("alice@example.com").accountId not in (None, first, second)


def test_accountIdsGivenToUsersOfAnOlderFile(path):
    """
    Opening a file of schema version 1 (no account ids) gives each of its
    users an id of its own, and logins still work.
    """
    db = sqlite3.connect(path)
    for statement in sqlitedirectory._MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO domains (name) VALUES ('example.com')")
    for name in ("a", "b"):
        db.execute(
            "INSERT INTO users (address, domain, localpart, password, cram_md5, enabled)"
            " VALUES (?, 'example.com', ?, 'hash', NULL, 1)", (name + "@example.com", name),
        )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    directory = SQLiteDirectory(path)
    try:
        ids = {directory.getUser(a).accountId for a in ("a@example.com", "b@example.com")}
        assert len(ids) == 2 and all(len(i) == 32 for i in ids)
        assert directory.getSecrets("a@example.com") == {
            "password": "hash", "cram-md5": None, "account-id": directory.getUser("a@example.com").accountId,
        }
    finally:
        directory.close()


def test_addUserStoresBothSecrets(populated):
    secrets = populated.getSecrets("alice@example.com")
    assert set(secrets) == {"password", "cram-md5", "account-id"}
    assert secrets["account-id"] == populated.getUser("alice@example.com").accountId
    assert secrets["password"].startswith("$scrypt$")
    assert "secret" not in secrets["password"]
    assert verifyPassword("secret", secrets["password"])
    assert secrets["cram-md5"] == cramMD5Secret("secret")


def test_addUserUnknownDomain(populated):
    with pytest.raises(NotFound):
        populated.addUser("eve@example.net", "pw")


@pytest.mark.parametrize(
    "address", ["", "alice", "@example.com", "a b@example.com", "a@b@", None, b"a@b.c"]
)
def test_addUserInvalidAddress(populated, address):
    with pytest.raises(InvalidInput):
        populated.addUser(address, "pw")


@pytest.mark.parametrize("password", ["", b"", None, 42])
def test_addUserInvalidPassword(populated, password):
    with pytest.raises(InvalidInput):
        populated.addUser("dave@example.com", password)
    assert populated.getUser("dave@example.com") is None


def test_addUserClashesWithAlias(populated):
    populated.addAlias("sales@example.com", ["alice@example.com"])
    with pytest.raises(Exists):
        populated.addUser("Sales@example.com", "pw")


def test_removeUser(populated):
    populated.removeUser("Bob@example.com")
    assert populated.getUser("bob@example.com") is None
    assert populated.listUsers("example.com") == ["alice@example.com"]
    with pytest.raises(NotFound):
        populated.removeUser("bob@example.com")
    with pytest.raises(InvalidInput):
        populated.removeUser("bob")


def test_setPassword(populated):
    before = populated.getSecrets("alice@example.com")
    populated.setPassword("alice@example.com", "new password")
    after = populated.getSecrets("alice@example.com")
    assert verifyPassword("new password", after["password"])
    assert not verifyPassword("secret", after["password"])
    assert after["cram-md5"] == cramMD5Secret("new password")
    assert after["cram-md5"] != before["cram-md5"]
    with pytest.raises(NotFound):
        populated.setPassword("nobody@example.com", "pw")
    with pytest.raises(InvalidInput):
        populated.setPassword("alice@example.com", "")


def test_setEnabled(populated):
    populated.setEnabled("alice@example.com", False)
    assert populated.getUser("alice@example.com").enabled is False
    assert populated.getSecrets("alice@example.com") is None
    with pytest.raises(Disabled):
        populated.resolve("alice@example.com")
    populated.setEnabled("alice@example.com", True)
    assert populated.getUser("alice@example.com").enabled is True
    assert populated.getSecrets("alice@example.com") is not None
    assert populated.resolve("alice@example.com") == Resolution(["alice@example.com"])
    with pytest.raises(NotFound):
        populated.setEnabled("nobody@example.com", False)


def test_getUserAndSecretsUnknown(populated):
    assert populated.getUser("nobody@example.com") is None
    assert populated.getSecrets("nobody@example.com") is None
    assert populated.getSecrets("alice@remote.org") is None
    with pytest.raises(InvalidInput):
        populated.getUser("nobody")
    with pytest.raises(InvalidInput):
        populated.getSecrets("nobody")


# --- aliases ----------------------------------------------------------------


def test_aliases(populated):
    assert populated.listAliases() == []
    populated.addAlias(
        "Sales@example.com",
        ["bob@example.com", "Alice@example.com", "bob@EXAMPLE.com", "x@Remote.org"],
    )
    populated.addAlias("info@example.org", "carol@example.org")
    assert populated.listAliases() == [
        ("info@example.org", ["carol@example.org"]),
        ("sales@example.com", ["bob@example.com", "alice@example.com", "x@remote.org"]),
    ]
    populated.removeAlias("SALES@example.com")
    assert populated.listAliases() == [("info@example.org", ["carol@example.org"])]
    with pytest.raises(NotFound):
        populated.removeAlias("sales@example.com")


def test_addAliasErrors(populated):
    populated.addAlias("sales@example.com", ["alice@example.com"])
    with pytest.raises(Exists):
        populated.addAlias("sales@example.com", ["bob@example.com"])
    with pytest.raises(Exists):
        populated.addAlias("alice@example.com", ["bob@example.com"])
    with pytest.raises(NotFound):
        populated.addAlias("sales@example.net", ["bob@example.com"])
    with pytest.raises(InvalidInput):
        populated.addAlias("info@example.com", [])
    with pytest.raises(InvalidInput):
        populated.addAlias("info@example.com", ["bob@example.com", "not an address"])
    with pytest.raises(InvalidInput):
        populated.addAlias("info@example.com", ["Info@example.com"])
    with pytest.raises(InvalidInput):
        populated.addAlias("info", ["bob@example.com"])
    assert populated.listAliases() == [("sales@example.com", ["alice@example.com"])]


# --- resolve ----------------------------------------------------------------


def test_resolveUser(populated):
    assert populated.resolve("alice@example.com") == Resolution(["alice@example.com"])
    assert populated.resolve('"Alice"@EXAMPLE.COM') == Resolution(
        ["alice@example.com"]
    )


def test_resolveUnknownLocal(populated):
    with pytest.raises(NotFound):
        populated.resolve("nobody@example.com")


def test_resolveRemote(populated):
    assert populated.resolve("Someone@Remote.ORG") == Resolution(
        [], ["someone@remote.org"]
    )


@pytest.mark.parametrize("address", ["", "postmaster", "a@", "a b@example.com", None])
def test_resolveInvalid(populated, address):
    with pytest.raises(InvalidInput):
        populated.resolve(address)


def test_resolveAliasOneToMany(populated):
    populated.addAlias(
        "team@example.com", ["bob@example.com", "alice@example.com", "x@remote.org"]
    )
    assert populated.resolve("Team@example.com") == Resolution(
        ["bob@example.com", "alice@example.com"], ["x@remote.org"]
    )


def test_resolveNestedAliases(populated):
    populated.addAlias("all@example.com", ["team@example.com", "carol@example.org"])
    populated.addAlias("team@example.com", ["bob@example.com", "ops@example.org"])
    populated.addAlias("ops@example.org", ["alice@example.com", "bob@example.com"])
    assert populated.resolve("all@example.com") == Resolution(
        ["bob@example.com", "alice@example.com", "carol@example.org"]
    )


def test_resolveLoop(populated):
    populated.addAlias("a@example.com", ["b@example.com"])
    populated.addAlias("b@example.com", ["a@example.com", "alice@example.com"])
    assert populated.resolve("a@example.com") == Resolution(["alice@example.com"])
    assert populated.resolve("b@example.com") == Resolution(["alice@example.com"])


def test_resolvePureLoop(populated):
    populated.addAlias("a@example.com", ["b@example.com"])
    populated.addAlias("b@example.com", ["a@example.com"])
    with pytest.raises(NotFound):
        populated.resolve("a@example.com")


def test_resolveDepthLimit(populated):
    """
    Expansion stops at L{MAX_ALIAS_DEPTH} levels of aliases.
    """
    chain = ["l%d@example.com" % i for i in range(MAX_ALIAS_DEPTH + 2)]
    for alias, target in zip(chain, chain[1:]):
        populated.addAlias(alias, [target, alias.replace("@", "-r@") + ".remote"])
    populated.addAlias(chain[-1], ["alice@example.com"])
    result = populated.resolve(chain[0])
    assert result.local == []
    assert len(result.remote) == MAX_ALIAS_DEPTH
    assert populated.resolve(chain[2]).local == ["alice@example.com"]


def test_resolveDisabled(populated):
    populated.setEnabled("bob@example.com", False)
    with pytest.raises(Disabled):
        populated.resolve("bob@example.com")
    populated.addAlias("team@example.com", ["bob@example.com", "alice@example.com"])
    assert populated.resolve("team@example.com") == Resolution(["alice@example.com"])
    populated.addAlias("bobs@example.com", ["bob@example.com"])
    with pytest.raises(Disabled):
        populated.resolve("bobs@example.com")
    # A disabled user is not replaced by the catch-all.
    populated.setCatchAll("example.com", "alice@example.com")
    with pytest.raises(Disabled):
        populated.resolve("bob@example.com")


def test_resolveDanglingTarget(populated):
    """
    An alias target that no longer exists is skipped; if nothing is left, the
    alias is not found.
    """
    populated.addAlias("team@example.com", ["gone@example.com", "alice@example.com"])
    populated.addAlias("old@example.com", ["gone@example.com"])
    assert populated.resolve("team@example.com") == Resolution(["alice@example.com"])
    with pytest.raises(NotFound):
        populated.resolve("old@example.com")
    populated.removeUser("alice@example.com")
    with pytest.raises(NotFound):
        populated.resolve("team@example.com")


def test_resolveAliasToRemoteOnly(populated):
    populated.addAlias("fwd@example.com", ["Me@Elsewhere.NET", "me@elsewhere.net"])
    assert populated.resolve("fwd@example.com") == Resolution([], ["me@elsewhere.net"])


def test_noQueryCache(directory, path):
    """
    Changes written by plain SQL (another program) are seen at once, too.
    """
    directory.addDomain("example.com")
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO users (address, domain, localpart, password, cram_md5,"
        " enabled) VALUES ('z@example.com', 'example.com', 'z', NULL, NULL, 1)"
    )
    db.commit()
    db.close()
    assert directory.resolve("z@example.com") == Resolution(["z@example.com"])
    assert directory.listUsers() == ["z@example.com"]


def test_getUserRememberedUntilAnyChange(populated, path):
    """
    L{SQLiteDirectory.getUser}, asked before every command of a session,
    is answered from memory while the file is unchanged, and afresh after
    any commit: by this instance, by another, or by plain SQL.
    """
    statements = []
    populated._db.set_trace_callback(statements.append)
    first = populated.getUser("Bob@Example.com")
    assert populated.getUser("Bob@Example.com") == first
    assert [s for s in statements if "FROM users" in s] != []
    del statements[:]
    assert populated.getUser("Bob@Example.com") == first
    assert statements == ["PRAGMA data_version"]

    populated.setEnabled("bob@example.com", False)
    assert populated.getUser("Bob@Example.com").enabled is False

    other = SQLiteDirectory(path)
    try:
        other.setEnabled("bob@example.com", True)
        assert populated.getUser("Bob@Example.com").enabled is True
        other.removeUser("bob@example.com")
        assert populated.getUser("Bob@Example.com") is None
        other.addUser("bob@example.com", "again")
        again = populated.getUser("Bob@Example.com")
        assert again.accountId not in (None, first.accountId)
    finally:
        other.close()

    db = sqlite3.connect(path)
    db.execute("UPDATE users SET enabled = 0 WHERE address = 'bob@example.com'")
    db.commit()
    db.close()
    assert populated.getUser("Bob@Example.com").enabled is False


def test_getUserRemembersABoundedNumber(populated):
    """
    Past L{SQLiteDirectory.rememberedReads} answers, the remembered ones
    are forgotten, and every answer stays right.
    """
    populated.rememberedReads = 2
    addresses = ["alice@example.com", "bob@example.com", "carol@example.org", "nobody@example.org"]
    for _ in range(2):
        assert [u and u.address for u in map(populated.getUser, addresses)] == addresses[:3] + [None]
        assert len(populated._remembered) <= 2
    with pytest.raises(InvalidInput):
        populated.getUser("not an address")


def test_schemaVersionConstant():
    assert SCHEMA_VERSION == len(sqlitedirectory._MIGRATIONS)


def test_changeFromAnotherProcess(directory, path):
    """
    A change committed by another process (the C{mdpy} command) is seen by an
    instance that was opened before it.
    """
    directory.addDomain("example.com")
    assert directory.listUsers() == []
    script = (
        "import sys\n"
        "from mdpy.backends.files.directory import SQLiteDirectory\n"
        "d = SQLiteDirectory(sys.argv[1])\n"
        "d.addUser('new@example.com', 'pw')\n"
        "d.addAlias('list@example.com', ['new@example.com', 'x@remote.org'])\n"
        "d.close()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", script, path], check=True, env=env)
    assert directory.listUsers() == ["new@example.com"]
    assert directory.resolve("list@example.com") == Resolution(
        ["new@example.com"], ["x@remote.org"]
    )


# --- subaddresses (RFC 5233) ------------------------------------------------


def test_resolveSubaddressAsItsUser(populated):
    """
    C{bob+tag@} of a user C{bob} is C{bob}, the detail kept with it; so is
    a subaddress of an alias, delivered to its targets.
    """
    assert populated.resolve("Bob+Lists@Example.COM") == Resolution(["bob@example.com"], detail="lists")
    assert populated.resolve("bob+@example.com") == Resolution(["bob@example.com"], detail="")
    assert populated.resolve("bob+a+b@example.com").detail == "a+b"
    populated.addAlias("team@example.com", ["alice@example.com", "bob@example.com"])
    assert populated.resolve("team+x@example.com") == Resolution(
        ["alice@example.com", "bob@example.com"], detail="x"
    )
    assert populated.resolve("bob@example.com").detail is None


def test_resolveWholeAddressFirst(populated):
    """
    A user or an alias with the whole address takes precedence over the
    subaddress of another.
    """
    populated.addUser("bob+work@example.com", "secret")
    populated.addAlias("bob+home@example.com", ["alice@example.com"])
    assert populated.resolve("bob+work@example.com") == Resolution(["bob+work@example.com"])
    assert populated.resolve("bob+home@example.com") == Resolution(["alice@example.com"])
    assert populated.resolve("bob+work+x@example.com") == Resolution(["bob@example.com"], detail="work+x")


def test_resolveSubaddressBeforeCatchAll(populated):
    """
    The catch-all takes a subaddress only when its user part is no one's
    either.
    """
    populated.setCatchAll("example.com", "alice@example.com")
    assert populated.resolve("bob+x@example.com") == Resolution(["bob@example.com"], detail="x")
    caught = populated.resolve("nobody+x@example.com")
    assert (caught.local, caught.caught, caught.detail) == (
        ["alice@example.com"], {"alice@example.com"}, None)


def test_resolveSubaddressNotSplit(populated):
    """
    A delimiter that starts the local part makes no subaddress, nor does one
    of a remote domain or of a missing user.
    """
    with pytest.raises(NotFound):
        populated.resolve("+bob@example.com")
    with pytest.raises(NotFound):
        populated.resolve("nobody+x@example.com")
    assert populated.resolve("bob+x@remote.org") == Resolution([], ["bob+x@remote.org"])


def test_resolveSubaddressOfDisabledUser(populated):
    populated.setEnabled("bob@example.com", False)
    with pytest.raises(Disabled):
        populated.resolve("bob+x@example.com")


def test_resolveSubaddressTargetsOnce(populated):
    """
    Alias targets that are subaddresses of one account give it one copy,
    and a subaddress of the alias itself cuts the loop.
    """
    populated.addAlias("team@example.com", ["bob@example.com", "bob+team@example.com", "team+x@example.com"])
    assert populated.resolve("team@example.com") == Resolution(["bob@example.com"])


def test_recipientDelimiter(path):
    """
    The delimiter is set per directory: several characters are each one;
    empty turns subaddressing off.
    """
    directory = SQLiteDirectory(path, recipientDelimiter="-+")
    directory.addDomain("example.com")
    directory.addUser("bob@example.com", "secret")
    assert directory.resolve("bob-x@example.com").detail == "x"
    assert directory.resolve("bob+x-y@example.com").detail == "x-y"
    off = SQLiteDirectory(path, recipientDelimiter="")
    with pytest.raises(NotFound):
        off.resolve("bob+x@example.com")
    directory.close()
    off.close()
