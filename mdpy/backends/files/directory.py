# -*- test-case-name: tests.test_directory -*-
"""
An L{IDirectory} kept in one SQLite file.

The server and the C{mdpy} command open the same file from different
processes.  Nothing is cached in memory: every call runs its query, so a change
committed by one process is seen by the next call of any other.  The queries
all go through primary keys or indexes; L{SQLiteDirectory.resolve} of a plain
existing user is one indexed lookup (a few microseconds), cheap enough for
every SMTP C{RCPT}.

Invariants:
  - a user or an alias address always belongs to a domain in C{domains}
    (L{SQLiteDirectory.removeDomain} deletes them with it);
  - no address is both a user and an alias;
  - writes run in C{BEGIN IMMEDIATE} transactions, so the check-then-insert
    of one process cannot interleave with another's.

The schema version is kept in C{PRAGMA user_version}; L{_MIGRATIONS} holds the
statements that bring a file from each version to the next.

Each user row has an account id (L{User.accountId}): 32 random hexadecimal
digits given by L{SQLiteDirectory.addUser}, so a user deleted and added again
under the same address is another account (a session that logged in to the
first one can tell; see L{mdpy.auth.accounts}).
"""

import os
import sqlite3

from zope.interface import implementer

from mdpy.address import checkDomain, normalise, normaliseDomain, splitSubaddress
from mdpy.auth.passwords import cramMD5Secret, hashPassword
from mdpy.directory import Resolution, User
from mdpy.quota import Quota
from mdpy.errors import (
    Disabled,
    Exists,
    InvalidInput,
    NotFound,
    TemporaryFailure,
)
from mdpy.interfaces import IDirectory
from mdpy.backends.files.sqlitefile import SQLiteFile

BUSY_TIMEOUT_MS = 5000
MAX_ALIAS_DEPTH = 10

# _MIGRATIONS[n] takes a file from user_version n to n + 1.
_MIGRATIONS = [
    [
        "CREATE TABLE domains ("
        " name TEXT PRIMARY KEY,"
        " catchall TEXT"
        ") WITHOUT ROWID",
        "CREATE TABLE users ("
        " address TEXT PRIMARY KEY,"
        " domain TEXT NOT NULL,"
        " localpart TEXT NOT NULL,"
        " password TEXT,"
        " cram_md5 TEXT,"
        " enabled INTEGER NOT NULL DEFAULT 1"
        ") WITHOUT ROWID",
        "CREATE INDEX users_domain ON users (domain)",
        "CREATE TABLE aliases ("
        " alias TEXT NOT NULL,"
        " position INTEGER NOT NULL,"
        " target TEXT NOT NULL,"
        " domain TEXT NOT NULL,"
        " PRIMARY KEY (alias, position)"
        ") WITHOUT ROWID",
        "CREATE INDEX aliases_domain ON aliases (domain)",
    ],
    [
        "ALTER TABLE users ADD COLUMN account_id TEXT",
        "UPDATE users SET account_id = lower(hex(randomblob(16)))",
    ],
    [
        # Quotas (L{mdpy.quota}): NULL is no limit.
        "ALTER TABLE users ADD COLUMN quota_storage INTEGER",
        "ALTER TABLE users ADD COLUMN quota_messages INTEGER",
        "ALTER TABLE users ADD COLUMN quota_warned INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE domains ADD COLUMN quota_storage INTEGER",
        "ALTER TABLE domains ADD COLUMN quota_messages INTEGER",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)

# One round trip answers "what is this address": kind 0 is a user (value:
# enabled), kind 1 an alias target (in order), kind 2 the local domain (value:
# its catch-all or NULL).  No row at all: a remote address.
_LOOKUP = (
    "SELECT 0, enabled, 0 FROM users WHERE address = ?1"
    " UNION ALL SELECT 1, target, position FROM aliases WHERE alias = ?1"
    " UNION ALL SELECT 2, catchall, 0 FROM domains WHERE name = ?2"
)
_USER_ENABLED = "SELECT enabled FROM users WHERE address = ?"


def _checkAddress(address):
    """
    @return: the normal form of C{address}.
    @raise InvalidInput: it is not a valid address.
    """
    if not isinstance(address, str):
        raise InvalidInput("address must be a string: %r" % (address,))
    return normalise(address)


def _checkDomainName(name):
    """
    @return: the normal form of the domain C{name}.
    @raise InvalidInput: it is not a valid domain.
    """
    if not isinstance(name, str):
        raise InvalidInput("domain must be a string: %r" % (name,))
    domain = normaliseDomain(name.strip())
    checkDomain(domain, utf8=True)
    return domain


def _domainOf(address):
    return address.rpartition("@")[2]


def _newAccountId():
    """
    @return: the id of an account being made: 128 random bits as text, never
        the id of another account.
    """
    return os.urandom(16).hex()


def _secretsFor(password):
    """
    @return: C{(scrypt hash, CRAM-MD5 secret)} for a new password.
    @raise InvalidInput: the password is empty or not text.
    """
    if not isinstance(password, (str, bytes)):
        raise InvalidInput("password must be a string")
    if not password:
        raise InvalidInput("empty password")
    return hashPassword(password), cramMD5Secret(password)


class _Expansion:
    """
    The state of one L{SQLiteDirectory.resolve}: what was found so far.
    """

    def __init__(self):
        self.seen = set()
        self.local = []
        self.remote = []
        self.caught = []
        self.disabled = False
        self.detail = None


def _userRow(db, address):
    """
    @return: the L{User} fields of C{address}, or L{None}.
    @raise InvalidInput: C{address} is malformed.
    """
    rows = db.execute(
        "SELECT address, domain, localpart, enabled, account_id FROM users WHERE address = ?",
        (_checkAddress(address),),
    ).fetchall()
    return rows[0] if rows else None


@implementer(IDirectory)
class SQLiteDirectory(SQLiteFile):
    """
    Domains, users and aliases in a SQLite database (WAL mode), shared by the
    server and the C{mdpy} command.

    @ivar path: the database file.
    @ivar recipientDelimiter: the characters that end the user part of a
        subaddress (see L{resolve}); C{""} for no subaddressing.
    """

    migrations = _MIGRATIONS
    busyTimeoutMS = BUSY_TIMEOUT_MS
    errorPrefix = "directory "

    def __init__(self, path, recipientDelimiter="+"):
        """
        @param path: the database file, made on first use.
        @param recipientDelimiter: see L{recipientDelimiter}.
        """
        SQLiteFile.__init__(self, path)
        self.recipientDelimiter = recipientDelimiter or ""

    def __repr__(self):
        return "<SQLiteDirectory %r>" % (self.path,)

    def _error(self, error):
        if isinstance(error, sqlite3.IntegrityError):
            return Exists("directory %s: %s" % (self.path, error))
        return SQLiteFile._error(self, error)

    @staticmethod
    def _exists(db, sql, params):
        return bool(db.execute(sql, params).fetchall())

    def _requireDomain(self, db, domain):
        if not self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (domain,)):
            raise NotFound("no such domain: %s" % (domain,))

    def _requireFree(self, db, address):
        """
        @raise Exists: C{address} is a user or an alias.
        """
        if self._exists(db, "SELECT 1 FROM users WHERE address = ?", (address,)):
            raise Exists("a user %s exists" % (address,))
        if self._exists(db, "SELECT 1 FROM aliases WHERE alias = ?", (address,)):
            raise Exists("an alias %s exists" % (address,))

    # --- domains ------------------------------------------------------------

    def listDomains(self):
        """
        See L{IDirectory.listDomains}.
        """
        return [row[0] for row in self._read("SELECT name FROM domains ORDER BY name")]

    def addDomain(self, name):
        """
        See L{IDirectory.addDomain}.
        """
        domain = _checkDomainName(name)
        with self._write() as db:
            if self._exists(db, "SELECT 1 FROM domains WHERE name = ?", (domain,)):
                raise Exists("domain %s exists" % (domain,))
            db.execute("INSERT INTO domains (name) VALUES (?)", (domain,))

    def removeDomain(self, name):
        """
        See L{IDirectory.removeDomain}.
        """
        domain = _checkDomainName(name)
        with self._write() as db:
            self._requireDomain(db, domain)
            db.execute("DELETE FROM users WHERE domain = ?", (domain,))
            db.execute("DELETE FROM aliases WHERE domain = ?", (domain,))
            db.execute("DELETE FROM domains WHERE name = ?", (domain,))

    def hasDomain(self, name):
        """
        See L{IDirectory.hasDomain}.
        """
        domain = _checkDomainName(name)
        return bool(self._read("SELECT 1 FROM domains WHERE name = ?", (domain,)))

    def setCatchAll(self, domain, target):
        """
        See L{IDirectory.setCatchAll}.
        """
        domain = _checkDomainName(domain)
        if target is not None:
            target = _checkAddress(target)
        with self._write() as db:
            self._requireDomain(db, domain)
            db.execute(
                "UPDATE domains SET catchall = ? WHERE name = ?", (target, domain)
            )

    def getCatchAll(self, domain):
        """
        @return: the catch-all address of C{domain}, or L{None}.
        @raise NotFound: no such domain.
        """
        domain = _checkDomainName(domain)
        rows = self._read("SELECT catchall FROM domains WHERE name = ?", (domain,))
        if not rows:
            raise NotFound("no such domain: %s" % (domain,))
        return rows[0][0]

    # --- users --------------------------------------------------------------

    def listUsers(self, domain=None):
        """
        See L{IDirectory.listUsers}.
        """
        if domain is None:
            rows = self._read("SELECT address FROM users ORDER BY address")
        else:
            rows = self._read(
                "SELECT address FROM users WHERE domain = ? ORDER BY address",
                (_checkDomainName(domain),),
            )
        return [row[0] for row in rows]

    def addUser(self, address, password):
        """
        See L{IDirectory.addUser}.  Both the scrypt hash and the CRAM-MD5
        secret of the password are stored (see L{mdpy.auth.passwords}), with
        a new account id.
        """
        address = _checkAddress(address)
        localpart, _, domain = address.rpartition("@")
        passwordHash, cramSecret = _secretsFor(password)
        with self._write() as db:
            self._requireDomain(db, domain)
            self._requireFree(db, address)
            db.execute(
                "INSERT INTO users"
                " (address, domain, localpart, password, cram_md5, enabled, account_id)"
                " VALUES (?, ?, ?, ?, ?, 1, ?)",
                (address, domain, localpart, passwordHash, cramSecret, _newAccountId()),
            )

    def removeUser(self, address):
        """
        See L{IDirectory.removeUser}.  Aliases pointing at the user are kept.
        """
        address = _checkAddress(address)
        with self._write() as db:
            if not db.execute(
                "DELETE FROM users WHERE address = ?", (address,)
            ).rowcount:
                raise NotFound("no such user: %s" % (address,))

    def setPassword(self, address, password):
        """
        See L{IDirectory.setPassword}.
        """
        address = _checkAddress(address)
        passwordHash, cramSecret = _secretsFor(password)
        with self._write() as db:
            if not db.execute(
                "UPDATE users SET password = ?, cram_md5 = ? WHERE address = ?",
                (passwordHash, cramSecret, address),
            ).rowcount:
                raise NotFound("no such user: %s" % (address,))

    def setEnabled(self, address, enabled):
        """
        See L{IDirectory.setEnabled}.

        @raise NotFound: no such user.
        """
        address = _checkAddress(address)
        with self._write() as db:
            if not db.execute(
                "UPDATE users SET enabled = ? WHERE address = ?",
                (1 if enabled else 0, address),
            ).rowcount:
                raise NotFound("no such user: %s" % (address,))

    def getUser(self, address):
        """
        See L{IDirectory.getUser}.  Sessions ask before each command whether
        their account is still there: the answer is remembered while the
        file is unchanged (L{SQLiteFile._readRemembered}).
        """
        row = self._readRemembered(("getUser", address), _userRow, address)
        return None if row is None else User(*row)

    def getSecrets(self, address):
        """
        See L{IDirectory.getSecrets}.
        """
        rows = self._read(
            "SELECT password, cram_md5, account_id FROM users WHERE address = ? AND enabled",
            (_checkAddress(address),),
        )
        if not rows:
            return None
        return {"password": rows[0][0], "cram-md5": rows[0][1], "account-id": rows[0][2]}

    # --- quotas -------------------------------------------------------------

    @staticmethod
    def _quotaValues(quota):
        quota = quota or Quota()
        for value in (quota.storage, quota.messages):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise InvalidInput("a limit must be a positive number: %r" % (value,))
        return quota.storage, quota.messages

    def setUserQuota(self, address, quota):
        """
        See L{IDirectory.setUserQuota}.
        """
        address = _checkAddress(address)
        values = self._quotaValues(quota)
        with self._write() as db:
            if not db.execute(
                "UPDATE users SET quota_storage = ?, quota_messages = ? WHERE address = ?",
                values + (address,),
            ).rowcount:
                raise NotFound("no such user: %s" % (address,))

    def setDomainQuota(self, domain, quota):
        """
        See L{IDirectory.setDomainQuota}.
        """
        domain = _checkDomainName(domain)
        values = self._quotaValues(quota)
        with self._write() as db:
            if not db.execute(
                "UPDATE domains SET quota_storage = ?, quota_messages = ? WHERE name = ?",
                values + (domain,),
            ).rowcount:
                raise NotFound("no such domain: %s" % (domain,))

    def getUserQuota(self, address):
        """
        See L{IDirectory.getUserQuota}.
        """
        address = _checkAddress(address)
        rows = self._read(
            "SELECT quota_storage, quota_messages FROM users WHERE address = ?", (address,))
        if not rows:
            raise NotFound("no such user: %s" % (address,))
        return Quota(*rows[0])

    def getDomainQuota(self, domain):
        """
        See L{IDirectory.getDomainQuota}.
        """
        domain = _checkDomainName(domain)
        rows = self._read(
            "SELECT quota_storage, quota_messages FROM domains WHERE name = ?", (domain,))
        if not rows:
            raise NotFound("no such domain: %s" % (domain,))
        return Quota(*rows[0])

    def getQuota(self, address):
        """
        See L{IDirectory.getQuota}: one indexed lookup.
        """
        rows = self._read(
            "SELECT u.quota_storage, u.quota_messages, d.quota_storage, d.quota_messages"
            " FROM users AS u JOIN domains AS d ON d.name = u.domain WHERE u.address = ?",
            (_checkAddress(address),),
        )
        if not rows:
            return Quota()
        own = Quota(rows[0][0], rows[0][1])
        return own if own else Quota(rows[0][2], rows[0][3])

    def quotaWarned(self, address):
        """
        See L{IDirectory.quotaWarned}.
        """
        rows = self._read(
            "SELECT quota_warned FROM users WHERE address = ?", (_checkAddress(address),))
        return bool(rows and rows[0][0])

    def setQuotaWarned(self, address, warned):
        """
        See L{IDirectory.setQuotaWarned}.
        """
        with self._write() as db:
            db.execute("UPDATE users SET quota_warned = ? WHERE address = ?",
                       (1 if warned else 0, _checkAddress(address)))

    # --- aliases ------------------------------------------------------------

    def listAliases(self):
        """
        See L{IDirectory.listAliases}.
        """
        result = []
        for alias, target in self._read(
            "SELECT alias, target FROM aliases ORDER BY alias, position"
        ):
            if not result or result[-1][0] != alias:
                result.append((alias, []))
            result[-1][1].append(target)
        return result

    def addAlias(self, alias, targets):
        """
        See L{IDirectory.addAlias}.

        @param targets: an address or a sequence of addresses; duplicates are
            dropped, the order is kept.
        @raise InvalidInput: no targets, or the alias is its own target.
        """
        alias = _checkAddress(alias)
        if isinstance(targets, str):
            targets = [targets]
        normalised = []
        for target in targets:
            target = _checkAddress(target)
            if target == alias:
                raise InvalidInput("%s cannot be its own target" % (alias,))
            if target not in normalised:
                normalised.append(target)
        if not normalised:
            raise InvalidInput("alias %s needs at least one target" % (alias,))
        domain = _domainOf(alias)
        with self._write() as db:
            self._requireDomain(db, domain)
            self._requireFree(db, alias)
            db.executemany(
                "INSERT INTO aliases (alias, position, target, domain)"
                " VALUES (?, ?, ?, ?)",
                [(alias, i, t, domain) for i, t in enumerate(normalised)],
            )

    def removeAlias(self, alias):
        """
        See L{IDirectory.removeAlias}.
        """
        alias = _checkAddress(alias)
        with self._write() as db:
            if not db.execute(
                "DELETE FROM aliases WHERE alias = ?", (alias,)
            ).rowcount:
                raise NotFound("no such alias: %s" % (alias,))

    # --- resolution ---------------------------------------------------------

    def resolve(self, address):
        """
        See L{IDirectory.resolve}.

        An address of a local domain is, in this order: a user (taken if
        enabled), an alias (each target resolved in turn, at most
        L{MAX_ALIAS_DEPTH} levels deep, an address met twice taken once, which
        also cuts loops), a subaddress C{user+detail@} of a user or an alias
        (RFC 5233: resolved as C{user@}, its detail in
        L{Resolution.detail}; C{+} is L{recipientDelimiter}), or, if none of
        these, the domain's catch-all resolved the same way.  Unknown
        addresses among alias targets are skipped.  An address of another
        domain stands for itself, as a remote address.  The bare
        C{postmaster} of RFC 5321 section 4.5.1 has no domain and is the
        caller's business.

        @raise InvalidInput: C{address} is malformed.
        """
        address = _checkAddress(address)
        try:
            with self._lock:
                rows = self._db.execute(_USER_ENABLED, (address,)).fetchall()
                if rows and rows[0][0]:
                    return Resolution([address])
                expansion = _Expansion()
                self._db.execute("BEGIN")
                try:
                    self._expand(address, 0, expansion)
                finally:
                    self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise TemporaryFailure("directory %s: %s" % (self.path, e))
        if expansion.local or expansion.remote:
            return Resolution(expansion.local, expansion.remote, expansion.caught, expansion.detail)
        if expansion.disabled:
            raise Disabled("%s: every target is disabled" % (address,))
        raise NotFound("no such user: %s" % (address,))

    def _expand(self, address, depth, expansion, caught=False):
        """
        Add what C{address} stands for to C{expansion}.  Called with the lock
        held, inside a read transaction.

        @param caught: whether C{address} stands in for another through a
            catch-all.
        """
        if address in expansion.seen or depth > MAX_ALIAS_DEPTH:
            return
        expansion.seen.add(address)
        rows = self._lookup(address)
        if not rows:
            expansion.remote.append(address)
            return
        if rows[0][0] == 2:
            # Neither a user nor an alias: a subaddress of one?
            user, detail = splitSubaddress(address, self.recipientDelimiter)
            userRows = self._lookup(user) if detail is not None else rows
            if userRows[0][0] != 2:
                if user in expansion.seen:
                    return
                expansion.seen.add(user)
                if depth == 0:
                    expansion.detail = detail
                address, rows = user, userRows
        kind, value = rows[0][0], rows[0][1]
        if kind == 0:
            if value:
                expansion.local.append(address)
                if caught:
                    expansion.caught.append(address)
            else:
                expansion.disabled = True
        elif kind == 1:
            for row in rows:
                if row[0] == 1:
                    self._expand(row[1], depth + 1, expansion, caught)
        elif value is not None:
            self._expand(value, depth + 1, expansion, True)

    def _lookup(self, address):
        """
        @return: the L{_LOOKUP} rows of C{address}, users first, then alias
            targets in order, then the domain.
        """
        rows = self._db.execute(_LOOKUP, (address, _domainOf(address))).fetchall()
        rows.sort(key=lambda row: (row[0], row[2]))
        return rows
