# -*- test-case-name: tests.test_store_memory -*-
"""
The rules every mail store keeps, whatever it stores mail in: which folder
names are valid, the name an account is filed under, the special-use folders
an account starts with, and how flags are normalised and changed.  The
protocols use these and no store's own helpers, so a store can be replaced
without touching them.
"""

from collections import namedtuple

from mdpy import mutf7
from mdpy.address import normaliseDomain, splitAddress
from mdpy.errors import InvalidInput, LimitExceeded, NotFound

SPECIAL_FOLDERS = ("Drafts", "Sent", "Trash", "Junk", "Archive")
# A folder's stored name is its levels in modified UTF-7 (RFC 3501 section
# 5.1.3), each after a one-octet separator, and must fit in one file name
# (NAME_MAX on the usual file systems), so every store takes the same names.
MAX_FOLDER_NAME_BYTES = 255
MAX_FOLDER_DEPTH = 32

DELETED = "\\Deleted"
SEEN = "\\Seen"
RECENT = "\\Recent"
# The system flags a store keeps (RFC 3501 section 2.3.2); \Recent belongs
# to a session, not to the message.
STORED_SYSTEM_FLAGS = ("\\Answered", DELETED, "\\Draft", "\\Flagged", SEEN)
_CANONICAL_FLAGS = {flag.lower(): flag for flag in STORED_SYSTEM_FLAGS + (RECENT, "$Forwarded")}
_STORED_SYSTEM = {flag.lower() for flag in STORED_SYSTEM_FLAGS}

ADD = "add"
REMOVE = "remove"
REPLACE = "replace"
FLAG_MODES = (ADD, REMOVE, REPLACE)


StoredFlags = namedtuple("StoredFlags", "flags modSeq changed")
StoredFlags.__doc__ = """
What L{mdpy.interfaces.IMailbox.changeFlags} left on one message: its
C{flags} (a L{frozenset}) and C{modSeq} as now stored, and whether this call
C{changed} it (gave it a new modification sequence).
"""


def changedFlags(current, flags, mode):
    """
    Apply a flag change to the flags a message has now.  Flags compare
    without regard to case (RFC 3501 section 2.3.2), so C{-FLAGS ($junk)}
    removes a stored C{$Junk} and C{+FLAGS ($junk)} does not add it twice.

    @param current: the message's stored flags.
    @param flags: the flags of the change, normalised.
    @param mode: L{ADD}, L{REMOVE} or L{REPLACE}.
    @return: the new flags, a L{frozenset}.
    """
    if mode == REPLACE:
        return frozenset(flags)
    lowered = {flag.lower() for flag in flags}
    if mode == REMOVE:
        return frozenset(flag for flag in current if flag.lower() not in lowered)
    if mode == ADD:
        have = {flag.lower() for flag in current}
        return frozenset(current) | {flag for flag in flags if flag.lower() not in have}
    raise ValueError("unknown flag change mode %r" % (mode,))


class FlagShorthand:
    """
    L{mdpy.interfaces.IMailbox.setFlags} for a mailbox that has
    C{changeFlags}.
    """

    def setFlags(self, uid, flags):
        """
        See L{mdpy.interfaces.IMailbox.setFlags}.
        """
        d = self.changeFlags([uid], flags, REPLACE)

        def modSeqOf(results):
            if uid not in results:
                raise NotFound("no message with UID %d" % (uid,))
            return results[uid].modSeq

        return d.addCallback(modSeqOf)


# How many expunged UIDs a folder remembers (L{ExpungeHistory}).
EXPUNGES_KEPT = 10000


class ExpungeHistory:
    """
    Which UIDs left a folder at which modification sequence, as far back as
    it is kept: the tombstones behind
    L{mdpy.interfaces.IMailbox.expungedSince}.  Bounded: past
    L{EXPUNGES_KEPT} UIDs the oldest records are dropped, and
    C{prunedModSeq} says up to where the history is no longer complete.

    @ivar prunedModSeq: removals at or below this modification sequence may
        be forgotten (0: none is).
    @ivar records: C{[(modSeq, uids)]}, modification sequences ascending,
        each C{uids} a L{tuple}.
    @ivar incomplete: whether records after the last may be missing (a
        crash of the machine lost them): then the history tells nothing.
    """

    def __init__(self, prunedModSeq=0, records=(), kept=None):
        """
        @param kept: how many UIDs to keep; L{None}: L{EXPUNGES_KEPT}.
        """
        self.prunedModSeq = prunedModSeq
        self.incomplete = False
        self.records = []
        self._kept = kept
        self._count = 0
        for modSeq, uids in records:
            self.record(modSeq, uids)

    def record(self, modSeq, uids):
        """
        Remember that C{uids} left the folder at C{modSeq} (not below any
        recorded before), forgetting the oldest records past the bound.
        """
        if not uids:
            return
        self.records.append((modSeq, tuple(uids)))
        self._count += len(uids)
        kept = EXPUNGES_KEPT if self._kept is None else self._kept
        while self._count > kept:
            dropped, gone = self.records.pop(0)
            self._count -= len(gone)
            self.prunedModSeq = max(self.prunedModSeq, dropped)

    def since(self, modSeq):
        """
        @return: the ascending UIDs that left after C{modSeq}, or L{None}
            when that part of the history is no longer kept.
        """
        if modSeq < self.prunedModSeq or self.incomplete:
            return None
        return sorted(uid for recorded, uids in self.records if recorded > modSeq for uid in uids)


# --- names ------------------------------------------------------------------


def normaliseFolderName(name):
    """
    Check a folder name of the store API (C{"/"} separates levels), before
    anything touches the disk.

    @return: the name, with a first level C{INBOX} in any case written
        C{INBOX}.
    @raise InvalidInput: empty, NUL, C{".."}, a leading or trailing C{"/"}, an
        empty level, or a C{"."} inside a level.
    @raise LimitExceeded: deeper than L{MAX_FOLDER_DEPTH} levels, or its
        stored name (C{.A.B}, modified UTF-7) longer than
        L{MAX_FOLDER_NAME_BYTES}.
    """
    if name == "INBOX":
        return name
    if not isinstance(name, str) or not name or "\0" in name:
        raise InvalidInput("bad folder name: %r" % (name,))
    if len(name) >= MAX_FOLDER_NAME_BYTES:
        # Every character takes at least one byte, and the directory a dot.
        raise LimitExceeded("folder name of %d characters is too long" % (len(name),))
    levels = name.split("/")
    for level in levels:
        if not level or "." in level:
            raise InvalidInput("bad folder name: %r" % (name,))
    if len(levels) > MAX_FOLDER_DEPTH:
        raise LimitExceeded("folder name of %d levels is too deep (at most %d)" % (len(levels), MAX_FOLDER_DEPTH))
    if levels[0].upper() == "INBOX":
        levels[0] = "INBOX"
    name = "/".join(levels)
    size = len(encodedFolderName(name))
    if size > MAX_FOLDER_NAME_BYTES:
        raise LimitExceeded("folder %r... is %d octets stored (at most %d)"
                            % (name[:40], size, MAX_FOLDER_NAME_BYTES))
    return name


def accountKey(address):
    """
    @return: the name an account is filed under: C{local@domain}, both
        lowercased.
    @raise InvalidInput: not an address.
    """
    local, domain = splitAddress(address)
    domain = normaliseDomain(domain)
    if not domain:
        raise InvalidInput("not an address: %r" % (address,))
    return "%s@%s" % (local.lower(), domain)


def encodedFolderName(name):
    """
    @return: the stored name of folder C{name} (normalised, not INBOX):
        C{.A.B}, each level in modified UTF-7.
    """
    return "." + ".".join(mutf7.encode(level) for level in name.split("/"))


# --- flags ------------------------------------------------------------------


def normaliseFlags(flags):
    """
    @return: a L{frozenset} of C{flags} with system flags (C{\\seen}) in their
        canonical case; keywords as given.
    """
    return frozenset(_CANONICAL_FLAGS.get(flag.lower(), flag) for flag in flags)


def storableFlags(flags):
    """
    @return: C{flags} as a store keeps them: normalised, without C{\\Recent}
        or other system flags a store does not keep (L{STORED_SYSTEM_FLAGS}).
    """
    return frozenset(
        flag for flag in normaliseFlags(flags)
        if not flag.startswith("\\") or flag.lower() in _STORED_SYSTEM
    )
