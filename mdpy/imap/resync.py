# -*- test-case-name: tests.test_imap_qresync -*-
"""
Quick mailbox resynchronisation (QRESYNC, RFC 7162 section 3.2): the
parameters of SELECT and EXAMINE and of UID FETCH that ask for it, and what
the server answers a client that comes back to a mailbox it knew: the UIDs
gone since (C{* VANISHED (EARLIER)}, from the store's tombstones,
L{mdpy.interfaces.IMailbox.expungedSince}) and the messages changed since
(C{* n FETCH (UID FLAGS MODSEQ)}).
"""

from collections import namedtuple

from mdpy.imap.fetch import formatFlags
from mdpy.imap.parser import Atom, ParseError, SequenceSet, isAtom, number64
from mdpy.imap.selected import inRanges, vanishedResponse

# The most sequence number and UID pairs of seq-match-data looked at.
MAX_SEQUENCE_MATCH = 100000

Resync = namedtuple("Resync", "uidValidity modSeq knownUids sequenceMatch")
Resync.__doc__ = """
The C{QRESYNC} parameter of SELECT or EXAMINE (RFC 7162 section 3.2.5):
the C{uidValidity} and C{modSeq} the client last knew, the
L{SequenceSet} of the UIDs it knows or L{None}, and C{sequenceMatch}, its
C{(sequence numbers, UIDs)} sample (two L{SequenceSet}s) or L{None}.
"""


def parseSelectParameters(token):
    """
    Read the parameter list of SELECT or EXAMINE: C{(CONDSTORE)} (RFC 7162
    section 3.1.8) and C{(QRESYNC (uidvalidity modseq [known-uids
    [(known-sequence-set known-uid-set)]]))} (section 3.2.5).

    @return: C{(condstore, resync)}: whether CONDSTORE was asked for, and
        the L{Resync} or L{None}.
    @raise ParseError: another parameter, or a malformed one.
    """
    if not isinstance(token, list):
        raise ParseError("Unknown SELECT parameter")
    condstore, resync = False, None
    items = list(token)
    while items:
        name = items.pop(0)
        if isAtom(name, "CONDSTORE"):
            condstore = True
        elif isAtom(name, "QRESYNC") and items and isinstance(items[0], list) and resync is None:
            resync = _parseResync(items.pop(0))
        else:
            raise ParseError("Unknown SELECT parameter")
    return condstore, resync


def _parseResync(values):
    if not 2 <= len(values) <= 4:
        raise ParseError("Invalid QRESYNC parameter")
    uidValidity, modSeq = number64(values[0]), number64(values[1])
    if uidValidity == 0 or uidValidity >= 2**32 or modSeq == 0:
        raise ParseError("Invalid QRESYNC parameter")
    knownUids = sequenceMatch = None
    rest = values[2:]
    if rest and isinstance(rest[0], Atom):
        knownUids = SequenceSet.parse(rest.pop(0))
    if rest:
        sample = rest.pop(0)
        if not isinstance(sample, list) or len(sample) != 2 or rest:
            raise ParseError("Invalid QRESYNC parameter")
        sequenceMatch = (SequenceSet.parse(sample[0]), SequenceSet.parse(sample[1]))
    return Resync(uidValidity, modSeq, knownUids, sequenceMatch)


def parseFetchModifiers(token, uid):
    """
    Read the modifiers of FETCH: C{CHANGEDSINCE n} (RFC 7162 section
    3.1.4) and C{VANISHED} (section 3.2.6), which only UID FETCH takes, and
    only with C{CHANGEDSINCE}.

    @return: C{(changedSince, vanished)}.
    @raise ParseError: another modifier, or VANISHED where it is not valid.
    """
    if not isinstance(token, list):
        raise ParseError("Unknown FETCH modifier")
    changedSince, vanished = None, False
    items = list(token)
    while items:
        name = items.pop(0)
        if isAtom(name, "CHANGEDSINCE") and items and changedSince is None:
            changedSince = number64(items.pop(0))
        elif isAtom(name, "VANISHED") and not vanished:
            vanished = True
        else:
            raise ParseError("Unknown FETCH modifier")
    if vanished and (not uid or changedSince is None):
        raise ParseError("VANISHED needs UID FETCH and CHANGEDSINCE")
    return changedSince, vanished


def _sampleLowerBound(selected, sequenceMatch):
    """
    RFC 7162 section 3.2.5.2: the client's sample of sequence numbers and
    their UIDs, compared with the view; as long as they agree, no message
    below that UID can have been expunged since the client took it.

    @return: the largest UID of the sample agreeing with the view (0: none).
    """
    sequences, uids = sequenceMatch
    numbers = _expand(sequences, selected.count)
    known = _expand(uids, selected.largestUid)
    if numbers is None or known is None or len(numbers) != len(known):
        return 0
    lower = 0
    for number, uid in zip(numbers, known):
        if number > selected.count or selected.uids[number - 1] != uid:
            break
        lower = uid
    return lower


def _expand(sequence, largest):
    """
    @return: the numbers of C{sequence} in order, or L{None} for a set
        past L{MAX_SEQUENCE_MATCH}.
    """
    numbers = []
    for low, high in sequence.bounds(largest):
        if len(numbers) + high - low + 1 > MAX_SEQUENCE_MATCH:
            return None
        numbers.extend(range(low, high + 1))
    return numbers


def resyncResponses(selected, resync, removed):
    """
    What SELECT or EXAMINE with QRESYNC sends after the usual responses
    (RFC 7162 section 3.2.5): the UIDs the client may know that are gone,
    then the messages changed since its modification sequence, among the
    UIDs it knows.

    @param selected: the new L{mdpy.imap.selected.SelectedMailbox}.
    @param resync: the L{Resync}, of the mailbox's UIDVALIDITY.
    @param removed: L{mdpy.interfaces.IMailbox.expungedSince} of
        C{resync.modSeq}.
    @return: the responses, L{bytes}.
    """
    largest = selected.mailbox.uidNext - 1
    if resync.knownUids is None:
        within = [(1, largest)]
    else:
        within = [(low, min(high, largest)) for low, high in resync.knownUids.bounds(largest) if low <= largest]
    if removed is None and resync.sequenceMatch is not None:
        lower = _sampleLowerBound(selected, resync.sequenceMatch)
        within = [(max(low, lower + 1), high) for low, high in within if high > lower]
    out = [vanishedResponse(selected.vanishedEarlier(removed, within), earlier=True)]
    knows = inRanges(resync.knownUids.bounds(selected.largestUid)) if resync.knownUids is not None else None
    for uid in selected.uids:
        message = selected.messages[uid]
        if message.modSeq <= resync.modSeq or (knows is not None and not knows(uid)):
            continue
        out.append(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (
            selected.sequence(message), uid, formatFlags(message.flags, selected.isRecent(message)), message.modSeq,
        ))
    return b"".join(out)
