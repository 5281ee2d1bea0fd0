# -*- test-case-name: tests.contract.test_contracts -*-
"""
The failed logins of every process sharing a data directory
(L{mdpy.interfaces.ILoginFailures}), in one SQLite file,
C{data_dir/logins.sqlite} (mode 0600: it names client addresses and
accounts).

Invariants: each call is one transaction (L{mdpy.backends.files.sqlitefile}),
so a check-then-record of one process never interleaves with another's;
the counts are not worth a disk flush (WAL, C{synchronous=NORMAL}: a
power cut may forget the last few), and what is older than the window
the caller gives is deleted as it records, so the file stays small.
"""

import os

from zope.interface import implementer

from mdpy.backends.files.sqlitefile import SQLiteFile
from mdpy.interfaces import ILoginFailures

_MIGRATIONS = [
    [
        "CREATE TABLE events ("
        " tbl TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " at REAL NOT NULL,"
        " source TEXT NOT NULL,"
        " tag BLOB"
        ")",
        "CREATE INDEX events_key ON events (tbl, key, at)",
        "CREATE INDEX events_at ON events (tbl, at)",
        "CREATE TABLE keys ("
        " tbl TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " latest REAL NOT NULL,"
        " PRIMARY KEY (tbl, key)"
        ") WITHOUT ROWID",
        "CREATE INDEX keys_latest ON keys (tbl, latest)",
    ],
]


@implementer(ILoginFailures)
class SQLiteLoginFailures(SQLiteFile):
    """
    See L{ILoginFailures} and the module docstring.
    """

    migrations = _MIGRATIONS
    synchronous = "NORMAL"
    busyTimeoutMS = 2000
    errorPrefix = "login failures: "

    def __init__(self, path):
        if path != ":memory:":
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        SQLiteFile.__init__(self, path)

    def __repr__(self):
        return "<SQLiteLoginFailures %r>" % (self.path,)

    def record(self, table, key, source, tag, now, since, maxEvents, maxKeys):
        """
        See L{ILoginFailures.record}.
        """
        key, source = str(key), str(source)
        with self._write() as db:
            db.execute("DELETE FROM events WHERE tbl = ? AND at <= ?", (table, since))
            db.execute("DELETE FROM keys WHERE tbl = ? AND latest <= ?", (table, since))
            if tag is not None and db.execute(
                "SELECT 1 FROM events WHERE tbl = ? AND key = ? AND at > ? AND tag = ? LIMIT 1",
                (table, key, since, tag),
            ).fetchall():
                return False
            db.execute("INSERT INTO events (tbl, key, at, source, tag) VALUES (?, ?, ?, ?, ?)",
                       (table, key, now, source, tag))
            new = not db.execute("SELECT 1 FROM keys WHERE tbl = ? AND key = ?", (table, key)).fetchall()
            db.execute(
                "INSERT INTO keys (tbl, key, latest) VALUES (?, ?, ?)"
                " ON CONFLICT (tbl, key) DO UPDATE SET latest = excluded.latest",
                (table, key, now),
            )
            db.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE tbl = ? AND key = ?"
                " ORDER BY at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (table, key, maxEvents),
            )
            if new:
                self._dropOldestKeys(db, table, maxKeys)
        return True

    @staticmethod
    def _dropOldestKeys(db, table, maxKeys):
        excess = db.execute("SELECT COUNT(*) FROM keys WHERE tbl = ?", (table,)).fetchall()[0][0] - maxKeys
        if excess <= 0:
            return
        oldest = db.execute("SELECT key FROM keys WHERE tbl = ? ORDER BY latest LIMIT ?",
                            (table, excess)).fetchall()
        db.executemany("DELETE FROM events WHERE tbl = ? AND key = ?", [(table, k) for (k,) in oldest])
        db.executemany("DELETE FROM keys WHERE tbl = ? AND key = ?", [(table, k) for (k,) in oldest])

    def recent(self, table, key, since):
        """
        See L{ILoginFailures.recent}.
        """
        rows = self._read(
            "SELECT at, source, tag FROM events WHERE tbl = ? AND key = ? AND at > ? ORDER BY at, rowid",
            (table, str(key), since),
        )
        return tuple((at, source, None if tag is None else bytes(tag)) for at, source, tag in rows)

    def forget(self, table, key, source):
        """
        See L{ILoginFailures.forget}.
        """
        key = str(key)
        with self._write() as db:
            db.execute("DELETE FROM events WHERE tbl = ? AND key = ? AND source = ?", (table, key, str(source)))
            db.execute(
                "DELETE FROM keys WHERE tbl = ? AND key = ?"
                " AND NOT EXISTS (SELECT 1 FROM events WHERE tbl = ? AND key = ?)",
                (table, key, table, key),
            )

    def keys(self, table, since):
        """
        See L{ILoginFailures.keys}.
        """
        return self._read("SELECT COUNT(*) FROM keys WHERE tbl = ? AND latest > ?", (table, since))[0][0]
