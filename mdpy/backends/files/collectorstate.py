# -*- test-case-name: tests.test_domainpop_state -*-
"""
What a DomainPOP or MultiPOP source remembers between runs, for the files
backend: the state of each message on the server (by UIDL, RFC 1939
section 7), the messages held for the administrator and the dedupe cache
(L{mdpy.interfaces.IDedupeCache}; why one, and how its keys are made, in
L{mdpy.domainpop.state}), in one SQLite file per source,
C{data_dir/<domainpop or multipop>/<name>/state.sqlite}
(L{CollectorStates}).

Invariants:
  - every write is one C{BEGIN IMMEDIATE} transaction, committed durably
    (WAL journal, C{synchronous=FULL}) before the method returns;
  - L{CollectorState.markDelivered} records the UIDL as delivered and its
    dedupe pairs in one transaction: after a crash either both are there
    or neither is;
  - the server and the C{mdpy domainpop run} command may open one file at
    once: a writer waits for the other up to L{BUSY_TIMEOUT_MS}.
"""

import os
import threading
import time

from zope.interface import implementer

from mdpy.backends.files.sqlitefile import SQLiteFile
from mdpy.backends.local import sourceParts
from mdpy.interfaces import ICollectorStates, IDedupeCache

BUSY_TIMEOUT_MS = 10000

STATE_FILE = "state.sqlite"

PENDING = "pending"
DELIVERED = "delivered"

# _MIGRATIONS[n] takes a file from user_version n to n + 1.
_MIGRATIONS = [
    [
        "CREATE TABLE uids ("
        " uid TEXT PRIMARY KEY,"
        " state TEXT NOT NULL,"
        " first_seen REAL NOT NULL"
        ") WITHOUT ROWID",
        "CREATE TABLE dedupe ("
        " key TEXT NOT NULL,"
        " recipient TEXT NOT NULL,"
        " seen REAL NOT NULL,"
        " PRIMARY KEY (key, recipient)"
        ") WITHOUT ROWID",
        "CREATE INDEX dedupe_seen ON dedupe (seen)",
        "CREATE TABLE counters ("
        " name TEXT PRIMARY KEY,"
        " value INTEGER NOT NULL"
        ") WITHOUT ROWID",
    ],
    [
        "CREATE TABLE held ("
        " file TEXT PRIMARY KEY,"
        " uid TEXT NOT NULL,"
        " held_at REAL NOT NULL,"
        " reason TEXT NOT NULL"
        ") WITHOUT ROWID",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)


@implementer(IDedupeCache)
class CollectorState(SQLiteFile):
    """
    The persistent state of one DomainPOP or MultiPOP source, in one SQLite
    file (WAL journal, C{synchronous=FULL}: a committed transaction is
    durable), safe to open from two processes at once (the server and the
    C{mdpy domainpop run} command) and to call from several threads.

    A UIDL is C{"pending"} (downloaded or being downloaded, not yet
    delivered) or C{"delivered"}; with it is kept when it was first seen,
    for the "leave on the server for N days" rule.

    @ivar path: the database file.
    """

    migrations = _MIGRATIONS
    synchronous = "FULL"
    busyTimeoutMS = BUSY_TIMEOUT_MS

    def __init__(self, path, clock=time.time):
        """
        Open (and on first use create) the file.

        @param clock: gives the time now in seconds since the epoch.
        @raise mdpy.errors.TemporaryFailure: the file cannot be opened.
        @raise mdpy.errors.PermanentFailure: it was made by a newer mdpy.
        """
        self._clock = clock
        SQLiteFile.__init__(self, path)

    def __repr__(self):
        return "<CollectorState %r>" % (self.path,)

    # --- UIDL state ---------------------------------------------------------

    def get(self, uid):
        """
        @return: C{(state, firstSeen)} of C{uid}, or L{None} when it is not
            known.
        """
        rows = self._read("SELECT state, first_seen FROM uids WHERE uid = ?", (uid,))
        return tuple(rows[0]) if rows else None

    def markPending(self, uid, firstSeen):
        """
        Record C{uid} as pending, durably.  A known C{uid} keeps its first
        time seen, and a delivered one stays delivered (delivering it again
        would give a duplicate).
        """
        self.markPendingMany([(uid, firstSeen)])

    def markPendingMany(self, items):
        """
        L{markPending} of each C{(uid, firstSeen)} of C{items}, in one
        transaction.
        """
        with self._write() as db:
            db.executemany(
                "INSERT INTO uids (uid, state, first_seen) VALUES (?, ?, ?) ON CONFLICT (uid) DO NOTHING",
                [(uid, PENDING, firstSeen) for uid, firstSeen in items],
            )

    def markDelivered(self, uid, pairs=()):
        """
        Record, durably and in one transaction, C{uid} as delivered and each
        C{(dedupeKey, recipient)} of C{pairs} in the dedupe cache as seen
        now.  A C{uid} not known yet is first seen now.
        """
        self.markDeliveredMany([(uid, pairs)])

    def markDeliveredMany(self, records):
        """
        L{markDelivered} of each C{(uid, pairs)} of C{records}, all in one
        transaction.
        """
        now = self._clock()
        with self._write() as db:
            db.executemany(
                "INSERT INTO uids (uid, state, first_seen) VALUES (?, ?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET state = excluded.state",
                [(uid, DELIVERED, now) for uid, pairs in records],
            )
            db.executemany(
                "INSERT INTO dedupe (key, recipient, seen) VALUES (?, ?, ?)"
                " ON CONFLICT (key, recipient) DO UPDATE SET seen = excluded.seen",
                [(key, recipient, now) for uid, pairs in records for key, recipient in pairs],
            )

    def forget(self, keep):
        """
        Drop the UIDLs that are not in C{keep}: the server no longer has
        them.  (A UIDL may come back only as another message, RFC 1939
        section 7.)

        @param keep: a set of the UIDLs the server lists now.
        """
        keep = set(keep)
        with self._write() as db:
            gone = [(uid,) for (uid,) in db.execute("SELECT uid FROM uids") if uid not in keep]
            db.executemany("DELETE FROM uids WHERE uid = ?", gone)

    def uids(self):
        """
        @return: a L{dict} of every known UIDL to its C{(state, firstSeen)}.
        """
        rows = self._read("SELECT uid, state, first_seen FROM uids")
        return {uid: (state, firstSeen) for uid, state, firstSeen in rows}

    # --- held messages ------------------------------------------------------

    def recordHeld(self, fileName, uid, reason):
        """
        Record, durably, why and when the message of C{uid} was kept in the
        held folder as C{fileName}; a message held again keeps its first
        time and takes the new reason.
        """
        with self._write() as db:
            db.execute(
                "INSERT INTO held (file, uid, held_at, reason) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (file) DO UPDATE SET reason = excluded.reason",
                (fileName, uid, self._clock(), reason),
            )

    def heldReasons(self):
        """
        @return: a L{dict} of the file name of every message recorded by
            L{recordHeld} to its C{(heldAt, reason)}.
        """
        rows = self._read("SELECT file, held_at, reason FROM held")
        return {fileName: (heldAt, reason) for fileName, heldAt, reason in rows}

    # --- dedupe cache -------------------------------------------------------

    def isDuplicate(self, key, recipient, ttl=None):
        """
        @param ttl: when given, only an entry recorded less than this many
            seconds ago counts; otherwise any entry not yet removed by
            L{expire}.
        @return: whether C{(key, recipient)} is in the dedupe cache.
        """
        sql = "SELECT 1 FROM dedupe WHERE key = ? AND recipient = ?"
        params = (key, recipient)
        if ttl is not None:
            sql += " AND seen > ?"
            params += (self._clock() - ttl,)
        return bool(self._read(sql, params))

    def expire(self, ttl):
        """
        Remove the dedupe entries recorded C{ttl} seconds ago or earlier.

        @return: how many were removed.
        """
        with self._write() as db:
            return db.execute("DELETE FROM dedupe WHERE seen <= ?", (self._clock() - ttl,)).rowcount

    def countDuplicates(self, n):
        """
        Add C{n} to the count of duplicate copies dropped, durably.
        """
        with self._write() as db:
            db.execute(
                "INSERT INTO counters (name, value) VALUES ('duplicates', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                (n,),
            )

    def duplicatesDropped(self):
        """
        @return: how many duplicate copies were dropped since the file was
            made.
        """
        rows = self._read("SELECT value FROM counters WHERE name = 'duplicates'")
        return rows[0][0] if rows else 0


@implementer(ICollectorStates)
class CollectorStates:
    """
    The L{CollectorState} of each source, in C{root/<source>/state.sqlite};
    see L{ICollectorStates}.  A source's file is opened once and shared by
    whoever asks for it in this process.

    @ivar root: the data directory.
    """

    def __init__(self, root, clock=time.time):
        self.root = root
        self._clock = clock
        self._states = {}
        self._lock = threading.Lock()

    def __repr__(self):
        return "<CollectorStates %s>" % (self.root,)

    def stateOf(self, source):
        """
        See L{ICollectorStates.stateOf}.
        """
        kind, name = sourceParts(source)
        with self._lock:
            state = self._states.get(source)
            if state is None:
                folder = os.path.join(self.root, kind, name)
                os.makedirs(folder, mode=0o700, exist_ok=True)
                state = self._states[source] = CollectorState(os.path.join(folder, STATE_FILE), self._clock)
            return state

    def close(self):
        """
        Close every state file opened.
        """
        with self._lock:
            states, self._states = self._states, {}
        for state in states.values():
            state.close()
