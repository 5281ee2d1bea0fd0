# -*- test-case-name: tests.test_imap_server -*-
"""
A session's view of its selected mailbox: the message sequence numbers it
has told the client about, the flags it last reported, and the changes it
still owes (RFC 3501 sections 2.3.1.2, 5.2, 5.5 and 7.4.1).

Invariants:
 - Sequence numbers change only when this view reports an C{EXPUNGE} or an
   C{EXISTS}; a message expunged by another session stays in the view (its
   data may be gone) until an expunge may be reported: never while a
   FETCH, STORE or SEARCH is answered (RFC 3501 section 7.4.1).
 - C{* n EXISTS} is never lower than the previous one unless EXPUNGEs
   were sent between.
"""

from bisect import bisect_left, bisect_right
from itertools import compress
from operator import attrgetter, is_not

from mdpy.imap.fetch import formatFlags
from mdpy.imap.parser import formatSequence

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# Listed in FLAGS even while no message has it.
_ALWAYS_KEYWORDS = ("$Forwarded",)


def _uidOf(message):
    return message.uid


def vanishedResponse(uids, earlier=False):
    """
    @param uids: sorted distinct UIDs, or C{(low, high)} ranges in order.
    @param earlier: C{(EARLIER)}: UIDs gone before now, which the client
        may not know (SELECT QRESYNC, UID FETCH VANISHED), rather than
        ones the view drops now.
    @return: the C{* VANISHED} response naming them (RFC 7162 section
        3.2.10), or C{b""} for none.
    """
    if not uids:
        return b""
    if isinstance(uids[0], tuple):
        text = b",".join(b"%d" % (low,) if low == high else b"%d:%d" % (low, high) for low, high in uids)
    else:
        text = formatSequence(uids)
    return b"* VANISHED %s%s\r\n" % (b"(EARLIER) " if earlier else b"", text)


def _mergedRanges(ranges):
    """
    @return: C{ranges} (C{(low, high)}, inclusive) sorted, overlapping and
        adjacent ones joined.
    """
    merged = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def inRanges(ranges):
    """
    @param ranges: C{(low, high)} ranges (inclusive), in any order.
    @return: a function telling whether a number is in one of them
        (a bisection: for sets of many ranges).
    """
    merged = _mergedRanges(ranges)
    lows = [low for low, _ in merged]

    def contains(value):
        index = bisect_right(lows, value) - 1
        return index >= 0 and value <= merged[index][1]

    return contains


class UidValidityChanged(Exception):
    """
    The mailbox's UIDs were renumbered under the session; it must end.
    """


def recentAmong(mailbox, readOnly, uids):
    """
    @param uids: UIDs of messages a session's view of C{mailbox} has just
        taken in.
    @return: those of C{uids} that are C{\\Recent} to the session (RFC
        3501 section 2.3.2): when it selected the mailbox read-write, those
        its view claimed (L{mdpy.interfaces.IMailbox.claimRecent}); with
        EXAMINE, which takes C{\\Recent} from no message, those no
        session has claimed yet.
    """
    if readOnly:
        threshold = mailbox.recentThreshold
        return [uid for uid in uids if uid > threshold]
    claimed = mailbox.claimedUids()
    return [uid for uid in uids if uid in claimed]


class SelectedMailbox:
    """
    The selected mailbox of one session.

    @ivar mailbox: the L{mdpy.interfaces.IMailbox} (this session's own
        object).
    @ivar readOnly: EXAMINE, or a mailbox that cannot be written.
    @ivar uids: the UIDs in sequence order (index + 1 is the sequence
        number).
    @ivar dirty: whether something may have changed since the last sync.
    @ivar keywords: the keywords the client was told of in FLAGS.
    @ivar saved: the UIDs a SEARCH with C{RETURN (SAVE)} saved, C{$} (RFC
        5182 section 2.1).
    @ivar reportsRecent: whether the session has C{\\Recent} and the
        C{RECENT} response (IMAP4rev1; not IMAP4rev2, RFC 9051 appendix E).
    """

    def __init__(self, mailbox, readOnly, recent=(), reportsRecent=True):
        self.mailbox = mailbox
        self.reportsRecent = reportsRecent
        self.saved = frozenset()
        self.readOnly = readOnly
        self.uidValidity = mailbox.uidValidity
        messages = mailbox.messages()
        self.uids = [m.uid for m in messages]
        self.messages = {m.uid: m for m in messages}
        self.flags = {m.uid: m.flags for m in messages}
        self.keywords = {flag for m in messages for flag in m.flags if not flag.startswith("\\")}
        self.keywords.update(_ALWAYS_KEYWORDS)
        self.recent = set(recent)
        self.gone = set()
        self.dirty = False
        self.reportedModSeq = mailbox.highestModSeq
        # The messages L{updates} compared the view with last, and the UIDs
        # whose flags the view holds may not be those messages' (noteFlags).
        self._compared = messages
        self._unsure = set()

    @property
    def count(self):
        return len(self.uids)

    @property
    def largestUid(self):
        return self.uids[-1] if self.uids else 0

    def sequence(self, message):
        """
        @return: the sequence number of C{message} (in this view).
        """
        return bisect_left(self.uids, message.uid) + 1

    def isRecent(self, message):
        return message.uid in self.recent

    def flagsResponses(self):
        """
        @return: the untagged C{FLAGS} and C{OK [PERMANENTFLAGS]} responses
            (RFC 3501 sections 7.2.6 and 7.1): the system flags and every
            keyword in L{keywords}.
        """
        names = " ".join(
            list(SYSTEM_FLAGS) + list(_ALWAYS_KEYWORDS) + sorted(self.keywords.difference(_ALWAYS_KEYWORDS))
        ).encode("utf-8")
        if self.readOnly:
            permanent = b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"
        else:
            permanent = b"* OK [PERMANENTFLAGS (%s \\*)] Flags permitted.\r\n" % (names,)
        return b"* FLAGS (%s)\r\n" % (names,) + permanent

    def announceKeywords(self, flags):
        """
        Note the keywords among C{flags} that a response is about to show.

        @return: C{FLAGS} and C{PERMANENTFLAGS} again if one of them is new
            to the client (RFC 3501 section 7.2.6), else C{b""}.
        """
        keywords = self.keywords
        if all(flag in keywords or flag.startswith("\\") for flag in flags):
            return b""
        keywords.update(flag for flag in flags if not flag.startswith("\\"))
        return self.flagsResponses()

    def firstUnseen(self):
        """
        @return: the sequence number of the first message without
            C{\\Seen}, or L{None}.
        """
        for index, uid in enumerate(self.uids):
            if "\\Seen" not in self.flags[uid]:
                return index + 1
        return None

    def messagesAt(self, indexes):
        """
        @return: the messages at these 0-based indexes.
        """
        uids, messages = self.uids, self.messages
        return [messages[uids[i]] for i in indexes]

    def noteFlags(self, message, flags=None):
        """
        Remember flags this session has just reported for C{message}.

        @param flags: the flags reported, when they may not be
            C{message.flags} (what a store change returned); if they
            differ, the next L{updates} reports the message's flags.
        """
        self.messages[message.uid] = message
        if flags is None or flags == message.flags:
            self.flags[message.uid] = message.flags
        else:
            self.flags[message.uid] = flags
            self._unsure.add(message.uid)

    def vanishedEarlier(self, removed, within):
        """
        The UIDs a client resynchronising may still believe in that are
        gone (RFC 7162 sections 3.2.5.2 and 3.2.6).

        @param removed: what L{mdpy.interfaces.IMailbox.expungedSince}
            said: the UIDs that left since the client's modification
            sequence, or L{None} when the store no longer knows, and then
            every UID not in this view is taken as gone.
        @param within: the C{(low, high)} UID ranges the client asks about.
        @return: C{(low, high)} ranges of those UIDs not in this view (one
            the store removed since the view's last sync stays in the
            view until it is reported as expunged).
        """
        within = _mergedRanges(within)
        uids = self.uids
        if removed is not None:
            present, asked = set(uids), inRanges(within)
            return _mergedRanges((uid, uid) for uid in removed if uid not in present and asked(uid))
        out = []
        for low, high in within:
            start = low
            for index in range(bisect_left(uids, low), bisect_right(uids, high)):
                if uids[index] > start:
                    out.append((start, uids[index] - 1))
                start = uids[index] + 1
            if start <= high:
                out.append((start, high))
        return out

    def updates(self, allowExpunge, claimRecent, modSeqs=False, vanished=False):
        """
        Compare the view with the mailbox's current state (synced by the
        caller) and bring the view up to date.

        @param allowExpunge: whether expunges may be reported now.
        @param claimRecent: C{claimRecent(uids)} returning the new UIDs that
            are recent for this session.
        @param modSeqs: whether flag changes carry their C{UID} and
            C{MODSEQ} (CONDSTORE enabled).
        @param vanished: whether expunges are reported as C{VANISHED}
            (QRESYNC enabled, RFC 7162 section 3.2.10).
        @return: the untagged responses (L{bytes}) to send, in order.
        @raise UidValidityChanged: the mailbox was renumbered.
        """
        mailbox = self.mailbox
        if mailbox.uidValidity != self.uidValidity:
            raise UidValidityChanged()
        out = []
        current = mailbox.messages()
        largest = self.largestUid
        # The messages the view has numbered that are still there: fewer
        # than it numbered if some are gone, even when as many new ones
        # came meanwhile (a MOVE into the mailbox itself).
        kept = bisect_right(current, largest, key=_uidOf)
        if kept != len(self.uids):
            self.gone.update(set(self.uids).difference(map(attrgetter("uid"), current[:kept])))
        if self.gone and allowExpunge:
            out.extend(self._reportExpunges(vanished))
        fresh = current[kept:]
        for message in self._changedSince(current):
            uid = message.uid
            if uid > largest:
                break
            known = self.flags.get(uid)
            if message is self.messages.get(uid) and message.flags is known:
                continue
            self.messages[uid] = message
            self.flags[uid] = message.flags
            if known is not None and message.flags != known:
                announced = self.announceKeywords(message.flags)
                if announced:
                    out.append(announced)
                items = [b"FLAGS " + formatFlags(message.flags, uid in self.recent)]
                if modSeqs:
                    # RFC 7162 section 3.1: UID and MODSEQ.
                    items.insert(0, b"UID %d" % (uid,))
                    items.append(b"MODSEQ (%d)" % (message.modSeq,))
                out.append(b"* %d FETCH (%s)\r\n" % (self.sequence(message), b" ".join(items)))
        if fresh:
            for message in fresh:
                announced = self.announceKeywords(message.flags)
                if announced:
                    out.append(announced)
                self.uids.append(message.uid)
                self.messages[message.uid] = message
                self.flags[message.uid] = message.flags
            out.append(b"* %d EXISTS\r\n" % (len(self.uids),))
            if self.reportsRecent:
                self.recent.update(claimRecent([m.uid for m in fresh]))
                out.append(b"* %d RECENT\r\n" % (len(self.recent),))
        self.reportedModSeq = mailbox.highestModSeq
        self.dirty = False
        return out

    def _changedSince(self, current):
        """
        @param current: the mailbox's messages now, in UID order.
        @return: those of C{current} that may not be as the view holds
            them, in UID order: when no message left since L{updates} last
            compared, those that are not the same objects as then (a
            mailbox gives a message changed since as a new object) and
            those of L{_unsure}; else all.
        """
        previous, self._compared = self._compared, current
        unsure, self._unsure = self._unsure, set()
        if len(current) < len(previous) or previous and current[len(previous) - 1].uid != previous[-1].uid:
            return current
        changed = list(compress(current, map(is_not, current, previous)))
        for uid in unsure:
            index = bisect_left(current, uid, key=_uidOf)
            if index < len(current) and current[index].uid == uid:
                changed.append(current[index])
        if unsure:
            changed.sort(key=_uidOf)
        return changed

    def _reportExpunges(self, vanished=False):
        """
        Drop the messages gone from the view.

        @param vanished: report them in one C{VANISHED} response rather
            than an C{EXPUNGE} each.
        """
        gone = sorted(self.gone)
        self.gone = set()
        out = []
        dropped = []
        for uid in reversed(gone):
            index = bisect_left(self.uids, uid)
            if index < len(self.uids) and self.uids[index] == uid:
                out.append(b"* %d EXPUNGE\r\n" % (index + 1,))
                dropped.append(uid)
                del self.uids[index]
                self.messages.pop(uid, None)
                self.flags.pop(uid, None)
                self.recent.discard(uid)
        if vanished:
            return [vanishedResponse(dropped[::-1])] if dropped else []
        return out
