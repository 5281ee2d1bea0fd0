# -*- test-case-name: tests.test_domainpop_state -*-
"""
What a DomainPOP or MultiPOP source remembers between runs: the state of
each message on the server (by UIDL, RFC 1939 section 7) and the dedupe
cache, in one SQLite file per source.

Why a dedupe cache: without an envelope header every copy of a message sent
To one local user and Cc another is delivered to both, once per copy (the
ISP holds one copy per envelope recipient).  The cache remembers which
message each local user already got, keyed on (message key, recipient), and
keeps it across runs for a time to live, since the copies may be collected
in different runs.  Keying on the pair and not the message alone matters:
two copies give one delivery per person, but a message that shares its
Message-ID with one already delivered to someone else (a list's copy, a
resend, a client reusing IDs) still reaches its own recipient (as Cyrus
C{deliver} keys on message-id and mailbox; davmail PR #437).

The message key (L{dedupeKey}) comes from one field, C{Message-ID} being
the safe choice: it is made to be unique.  Some clients send no
Message-ID; for such mail the content L{fingerprint} is the safer fallback.
Keying on C{Date} instead is a risk: two different messages sent in the
same second, from the same time zone, to the same person have the same key
and the second is dropped as a duplicate, lost without a trace.  The
fingerprint hashes every field that copies of one message share (Date,
From, Subject, Message-ID if any...) and the body, leaving out only the
trace fields (L{TRACE_HEADERS}) that the path of each copy adds, so two
messages that differ anywhere else have different fingerprints.

Invariants:
  - every write is one C{BEGIN IMMEDIATE} transaction, committed durably
    (WAL journal, C{synchronous=FULL}) before the method returns;
  - L{CollectorState.markDelivered} records the UIDL as delivered and its
    dedupe pairs in one transaction: after a crash either both are there
    or neither is;
  - the server and the C{mdpy domainpop run} command may open one file at
    once: a writer waits for the other up to L{BUSY_TIMEOUT_MS}.
"""

import hashlib
import re
import time

from zope.interface import implementer

from mdpy.interfaces import IDedupeCache
from mdpy.backends.files.sqlitefile import SQLiteFile

BUSY_TIMEOUT_MS = 10000

PENDING = "pending"
DELIVERED = "delivered"

DEDUPE_FINGERPRINT = "fingerprint"

# Fields that differ between the copies of one message: added on the way
# to each recipient (RFC 5321 section 4.4, RFC 9228, RFC 8601, RFC 8617,
# RFC 7208 section 9.1) or by a POP3 server or mail client on the mailbox.
TRACE_HEADERS = (
    "received",
    "delivered-to",
    "x-delivered-to",
    "x-rcpt-to",
    "x-mdrcpt-to",
    "x-original-to",
    "return-path",
    "envelope-to",
    "x-envelope-to",
    "x-uidl",
    "status",
    "x-status",
    "authentication-results",
    "arc-authentication-results",
    "arc-message-signature",
    "arc-seal",
    "received-spf",
    "x-received",
    "x-spam-status",
    "x-spam-score",
    "x-spam-level",
    "x-spam-flag",
    "x-virus-scanned",
)

# A field value longer than this is hashed in its dedupe key.
MAX_KEY_VALUE = 512

_WHITE_SPACE = re.compile(r"\s+")
_WHITE_SPACE_BYTES = re.compile(rb"[ \t\r\n]+")

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


# --- message keys -----------------------------------------------------------


def dedupeKey(head, headerName):
    """
    The dedupe key of a message from one of its fields.

    @param head: the message's L{mdpy.domainpop.recipients.Head}.
    @param headerName: the field, e.g. C{Message-ID} (see the module
        docstring on C{Date}).
    @return: C{"h:<name lowercased>:<value>"}, the value of the topmost
        field of that name decoded, its white space runs made one space (a
        value longer than L{MAX_KEY_VALUE} replaced by C{sha256:} and its
        hex digest); L{None} when the field is missing or empty.
    @raise ValueError: C{headerName} is L{DEDUPE_FINGERPRINT}, which needs
        the body: see L{fingerprint}.
    """
    name = headerName.strip().lower()
    if name == DEDUPE_FINGERPRINT:
        raise ValueError("the fingerprint is not a header: use fingerprint()")
    values = head.values(name)
    if not values:
        return None
    value = _WHITE_SPACE.sub(" ", values[0]).strip()
    if not value:
        return None
    if len(value) > MAX_KEY_VALUE:
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return "h:%s:%s" % (name, value)


def fingerprint(head, bodyChunks):
    """
    The content key of a message, the same for every copy of it however
    they travelled.

    @param head: the message's L{mdpy.domainpop.recipients.Head}.
    @param bodyChunks: an iterable of L{bytes}: the message after its header
        section (from C{head.size}).
    @return: C{"f:"} and the SHA-256 hex digest of each field not in
        L{TRACE_HEADERS} (name lowercased, raw value with its white space
        runs made one space), in order, then the body octets.
    """
    digest = hashlib.sha256()
    for name, raw in head.fields:
        if name in TRACE_HEADERS:
            continue
        value = _WHITE_SPACE_BYTES.sub(b" ", raw).strip()
        digest.update(name.encode("utf-8") + b":" + value + b"\r\n")
    digest.update(b"\r\n")
    for chunk in bodyChunks:
        digest.update(chunk)
    return "f:" + digest.hexdigest()
