"""
IMAP4rev2 (RFC 9051) beside IMAP4rev1 (RFC 3501), and the ENABLE command
(RFC 5161) that chooses it.

A session is IMAP4rev1 until the client sends C{ENABLE IMAP4rev2} (RFC 9051
section 6.3.1) in the authenticated state; from then on it follows RFC 9051
where it differs from RFC 3501 (RFC 9051 appendix E):
 - no C{\\Recent} flag, no C{* n RECENT} response, no STATUS RECENT and no
   SEARCH keys RECENT, NEW and OLD (C{BAD}): the session claims no message
   as recent, so those it sees stay recent for an IMAP4rev1 session (RFC
   9051 section 2.3.2);
 - SEARCH is answered with C{* ESEARCH}, C{ALL} being implied without
   C{RETURN} (RFC 9051 section 6.4.4);
 - SELECT and EXAMINE answer a C{LIST} response for the mailbox, and
   first say C{OK [CLOSED]} when they close another (RFC 9051 section
   6.3.2);
 - mailbox names are UTF-8 both ways, as with UTF8=ACCEPT (RFC 9051
   section 5.1).
What RFC 9051 folds in from extensions (LIST-EXTENDED with C{\\NonExistent}
and the children attributes, STATUS SIZE and DELETED, ESEARCH, LITERAL-,
UNSELECT, MOVE, BINARY, NAMESPACE, ID, IDLE, SASL-IR, UIDPLUS, SPECIAL-USE)
is answered the same way to both.
"""

from twisted.internet import defer

from mdpy.imap.mailboxes import listLine
from mdpy.imap.parser import Atom, ParseError

REV2 = "IMAP4rev2"

# What ENABLE turns on, by its name in upper case; QRESYNC implies CONDSTORE
# (RFC 7162 section 3.2.3).
_ENABLEABLE = {name.upper(): name for name in ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT", REV2)}


class EnableCommands:
    """
    ENABLE for L{mdpy.imap.server.IMAP4Server}, and what it chooses.
    """

    @property
    def rev2(self):
        """
        Whether the client ENABLEd IMAP4rev2.
        """
        return REV2 in self.enabled

    @property
    def utf8(self):
        """
        Whether mailbox names are UTF-8 both ways: UTF8=ACCEPT (RFC 6855
        section 3) or IMAP4rev2 (RFC 9051 section 5.1) enabled.
        """
        return "UTF8=ACCEPT" in self.enabled or REV2 in self.enabled

    def checkSearchKeys(self, criteria):
        """
        Refuse, in an IMAP4rev2 session, search keys RFC 9051 has no more
        (appendix E): C{RECENT}, C{NEW} and C{OLD}.

        @param criteria: the L{mdpy.imap.search.Criteria} of a SEARCH, SORT
            or THREAD.
        @raise ParseError: one is there (the command is answered C{BAD}).
        """
        if criteria.usesRecent and self.rev2:
            raise ParseError("RECENT, NEW and OLD are no search keys in IMAP4rev2")

    def listSelected(self, mailbox):
        """
        Send the C{LIST} response, with its attributes, for a mailbox an
        IMAP4rev2 SELECT or EXAMINE opened (RFC 9051 section 6.3.2).

        @return: a L{Deferred} firing with C{mailbox} once sent.
        """

        def send(listing):
            if not self.closing:
                self.send(listLine(b"LIST", listing.attributes(mailbox.name), mailbox.name, utf8=True))
            return mailbox

        return defer.ensureDeferred(self._listing()).addCallback(send)

    def do_ENABLE(self, tag, args):
        """
        RFC 5161 section 3.1: the untagged C{ENABLED} names what this
        command turned on.  IMAP4rev2 only in the authenticated state (RFC
        9051 section 6.3.1): the selected mailbox's view was made by
        IMAP4rev1's rules.  CONDSTORE and QRESYNC (which implies it, RFC 7162
        section 3.2.3) enabled with a mailbox selected are first answered
        with its C{OK [HIGHESTMODSEQ]} (RFC 7162 section 3.1), as any
        CONDSTORE enabling command is.
        """
        if not args or not all(isinstance(a, Atom) for a in args):
            raise ParseError("Expected capability names")
        names = [name.upper() for name in args]
        if REV2.upper() in names and self.selected is not None:
            return self.bad(tag, "ENABLE IMAP4rev2 is valid only in the authenticated state.")
        enabled = []
        for name in (_ENABLEABLE[upper] for upper in names if upper in _ENABLEABLE):
            if name not in self.enabled:
                if name in ("CONDSTORE", "QRESYNC"):
                    self.enableCondStore()
                self.enabled.add(name)
                enabled.append(name)
        self.untagged(b"ENABLED" + b"".join(b" " + n.encode("ascii") for n in enabled))
        return self.complete(tag, b"OK", b"Enabled.")
