# -*- test-case-name: tests.test_directory,tests.test_domainpop_state -*-
"""
One SQLite file shared by threads and processes (the server and the C{mdpy}
command): one connection behind a lock, a WAL journal, a busy timeout, and a
schema brought up to date from C{PRAGMA user_version} on open.

Invariants: writes run in C{BEGIN IMMEDIATE} transactions (the
check-then-insert of one process cannot interleave with another's), rolled
back when the block raises; reads fetch every row, so no read snapshot stays
open and the next call sees new commits; a read given again from memory
(L{SQLiteFile._readRemembered}) is one made since the last commit of any
connection; SQLite errors leave as L{mdpy.errors.TemporaryFailure}.
"""

import sqlite3
import threading
from contextlib import contextmanager

from mdpy.errors import PermanentFailure, TemporaryFailure


class SQLiteFile:
    """
    Subclasses set L{migrations}; L{synchronous} and L{busyTimeoutMS} if
    they need other values.

    @cvar migrations: C{migrations[n]} holds the statements that take a file
        from C{user_version} n to n + 1.
    @cvar synchronous: C{"FULL"} for a commit durable once it returns
        (WAL's default, C{NORMAL}, may lose the last commits on power loss).
    @cvar errorPrefix: what error texts start with, before the path.
    @cvar rememberedReads: how many answers L{_readRemembered} keeps.
    @ivar path: the database file.
    """

    migrations = ()
    synchronous = None
    busyTimeoutMS = 5000
    errorPrefix = ""
    rememberedReads = 10000

    def __init__(self, path):
        """
        Open (and on first use create) the file.

        @raise mdpy.errors.TemporaryFailure: the file cannot be opened.
        @raise mdpy.errors.PermanentFailure: it was made by a newer mdpy.
        """
        self.path = path
        self._lock = threading.Lock()
        self._remembered = {}
        self._rememberedVersion = None
        try:
            self._db = sqlite3.connect(
                path,
                timeout=self.busyTimeoutMS / 1000.0,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as e:
            raise TemporaryFailure("cannot open %s: %s" % (path, e))
        try:
            self._db.execute("PRAGMA busy_timeout = %d" % (self.busyTimeoutMS,))
            self._db.execute("PRAGMA journal_mode = WAL").fetchall()
            if self.synchronous is not None:
                self._db.execute("PRAGMA synchronous = %s" % (self.synchronous,))
            self._migrate()
        except sqlite3.Error as e:
            self._db.close()
            raise TemporaryFailure("cannot open %s: %s" % (path, e))
        except BaseException:
            self._db.close()
            raise

    def close(self):
        """
        Close the database.
        """
        with self._lock:
            self._db.close()

    def _migrate(self):
        """
        Bring the schema to the version L{migrations} lead to.
        """
        latest = len(self.migrations)
        if self._read("PRAGMA user_version")[0][0] == latest:
            return
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchall()[0][0]
            if version > latest:
                raise PermanentFailure(
                    "%s has schema version %d; this mdpy knows up to %d" % (self.path, version, latest)
                )
            for statements in self.migrations[version:]:
                for statement in statements:
                    db.execute(statement)
            db.execute("PRAGMA user_version = %d" % (latest,))

    def _error(self, error):
        """
        @return: the exception to raise for the SQLite C{error} of a write
            (a subclass may map some to L{mdpy.errors.MailError}s of its own).
        """
        return TemporaryFailure("%s%s: %s" % (self.errorPrefix, self.path, error))

    def _read(self, sql, params=()):
        """
        Run one query in its own (autocommit) read transaction.

        @return: all rows.
        @raise mdpy.errors.TemporaryFailure: SQLite failed.
        """
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise TemporaryFailure("%s%s: %s" % (self.errorPrefix, self.path, e))

    def _readRemembered(self, key, read, *args):
        """
        Answer a lookup made on every command (is the account of a session
        still there?) from memory while nothing has changed the file: no
        commit by another connection (C{PRAGMA data_version}, which reads
        no table) nor by this one (L{_write}) since C{read} last ran.

        @param key: what tells this lookup from others.
        @param read: C{read(db, *args)} makes the lookup on the connection
            C{db}, with the lock held; its result is given again, so it
            must not be changed by the caller.
        @return: the result of C{read}.
        @raise mdpy.errors.TemporaryFailure: SQLite failed.
        """
        try:
            with self._lock:
                version = self._db.execute("PRAGMA data_version").fetchall()[0][0]
                if version != self._rememberedVersion:
                    self._remembered.clear()
                    self._rememberedVersion = version
                try:
                    return self._remembered[key]
                except KeyError:
                    pass
                result = read(self._db, *args)
                if len(self._remembered) >= self.rememberedReads:
                    self._remembered.clear()
                self._remembered[key] = result
                return result
        except sqlite3.Error as e:
            raise TemporaryFailure("%s%s: %s" % (self.errorPrefix, self.path, e))

    @contextmanager
    def _write(self):
        """
        Run the block in one C{BEGIN IMMEDIATE} transaction, committed when
        it ends and rolled back if it raises.

        @raise mdpy.errors.TemporaryFailure: SQLite failed (file locked past
            the busy timeout, disk full, I/O error).
        """
        with self._lock:
            # This connection's own commits leave C{data_version} as it is.
            self._remembered.clear()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise self._error(e)
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._error(e)
                raise
