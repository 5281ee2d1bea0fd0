# -*- test-case-name: tests.test_imap_server -*-
"""
Mailbox names on the wire and the commands that manage mailboxes: modified UTF-7 names
(RFC 3501 section 5.1.3), or UTF-8 once the client ENABLEd UTF8=ACCEPT (RFC
6855 section 3), with C{/} as the hierarchy separator, LIST
patterns (section 6.3.8), and the attributes of CHILDREN (RFC 3348),
SPECIAL-USE (RFC 6154) and LIST-EXTENDED (RFC 5258).
"""

import re

from twisted.internet import defer

from mdpy import errors, mutf7
from mdpy.imap.structure import quoteString
from mdpy.imap.parser import Atom, ParseError, astring, isAtom
from mdpy.mailbox import DELETED
from mdpy.imap.selected import recentAmong

SEPARATOR = "/"
# DELETED and DELETED-STORAGE: RFC 9208 section 4.1.4 (QUOTA=RES-MESSAGE and
# QUOTA=RES-STORAGE need them).
_STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE",
                 "DELETED", "DELETED-STORAGE")
SPECIAL_USE = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


class InvalidName(ParseError):
    """
    A mailbox name that is neither valid modified UTF-7 nor UTF-8: no
    mailbox can have it.
    """


def decodeName(token, utf8=False):
    """
    @param utf8: whether the client ENABLEd UTF8=ACCEPT: the name is UTF-8,
        C{&} standing for itself.
    @return: the store name of a mailbox name argument: C{INBOX} in any case
        is C{INBOX}, a trailing separator is dropped, and modified UTF-7 is
        decoded (raw UTF-8 is taken as it is).
    @raise ParseError: not a string.
    @raise InvalidName: not UTF-8, or invalid modified UTF-7.
    """
    raw = astring(token)
    try:
        text = raw.decode("ascii")
        ascii = True
    except UnicodeDecodeError:
        ascii = False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidName("Mailbox name is not UTF-8")
    if ascii and not utf8:
        try:
            text = mutf7.decode(text, strict=True)
        except ValueError:
            raise InvalidName("Mailbox name is not valid modified UTF-7")
    if len(text) > 1 and text.endswith(SEPARATOR):
        text = text.rstrip(SEPARATOR)
    first, sep, rest = text.partition(SEPARATOR)
    if first.upper() == "INBOX":
        text = "INBOX" + sep + rest
    return text


def encodeName(name, utf8=False):
    """
    @param utf8: whether the client ENABLEd UTF8=ACCEPT.
    @return: a store name as a quoted modified UTF-7 mailbox name, or a
        quoted UTF-8 one.
    """
    if utf8:
        return quoteString(name, utf8=True)
    return quoteString(mutf7.encode(name))


def patternMatcher(reference, pattern):
    """
    @return: a function telling whether a store name matches the LIST
        C{reference} and C{pattern} (already decoded), where C{*} matches
        anything and C{%} anything but the separator.
    """
    full = reference + pattern if reference and not pattern.startswith(SEPARATOR) else pattern
    regex = []
    for ch in full:
        if ch == "*":
            regex.append(".*")
        elif ch == "%":
            regex.append("[^/]*")
        else:
            regex.append(re.escape(ch))
    text = "".join(regex)
    inbox = re.compile("(?i:INBOX)" + text[len("INBOX"):] + r"\Z") if full[:5].upper() == "INBOX" else None
    compiled = re.compile(text + r"\Z", re.DOTALL)

    def matches(name):
        if inbox is not None and inbox.match(name):
            return True
        return compiled.match(name) is not None

    return matches


class Listing:
    """
    The folders of an account as LIST sees them: existing ones, and parents
    that exist only as the prefix of another (C{\\Noselect}).
    """

    def __init__(self, names, subscribed=()):
        self.names = list(names)
        self.existing = set(self.names)
        self.subscribed = set(subscribed)
        self.parents = set()
        for name in list(self.existing) + list(self.subscribed):
            levels = name.split(SEPARATOR)
            for depth in range(1, len(levels)):
                self.parents.add(SEPARATOR.join(levels[:depth]))
        self.implied = sorted(self.parents - self.existing)

    def hasChildren(self, name):
        prefix = name + SEPARATOR
        return any(other.startswith(prefix) for other in self.existing)

    def subscribedOutside(self, name, matches):
        """
        @param matches: whether a name matches the patterns listed.
        @return: whether a subscribed mailbox below C{name} does not match,
            so C{name} must stand for it (C{\\Noselect} in LSUB, RFC 3501
            section 6.3.9; CHILDINFO, RFC 5258 section 3.5).
        """
        prefix = name + SEPARATOR
        return any(other.startswith(prefix) and not matches(other) for other in self.subscribed)

    def attributes(self, name, specialUse=True, subscribedFlag=False):
        """
        @return: the LIST attributes of C{name}.
        """
        attrs = []
        if name not in self.existing:
            attrs.append("\\NonExistent" if not self.hasChildren(name) else "\\Noselect")
        attrs.append("\\HasChildren" if self.hasChildren(name) else "\\HasNoChildren")
        if specialUse and name in SPECIAL_USE and name in self.existing:
            attrs.append(SPECIAL_USE[name])
        if subscribedFlag and name in self.subscribed:
            attrs.append("\\Subscribed")
        return attrs


def listLine(verb, attributes, name, extra=b"", utf8=False):
    """
    @param utf8: see L{encodeName}.
    @return: one C{* LIST (attrs) "/" name} response.
    """
    return b"* %s (%s) \"/\" %s%s\r\n" % (
        verb, " ".join(attributes).encode("ascii"), encodeName(name, utf8), extra,
    )


class MailboxCommands:
    """
    The commands of L{mdpy.imap.server.IMAP4Server} that manage mailboxes:
    CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB and STATUS.
    """

    def do_CREATE(self, tag, args):
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0], self.utf8)
        if name == "INBOX":
            return self.no(tag, b"Mailbox already exists.", b"ALREADYEXISTS")
        return self._simpleMailboxCommand(tag, defer.ensureDeferred(self._create(name)), b"Create completed.")

    async def _create(self, name):
        """
        Create C{name}, then the parents it implies that are missing (RFC
        3501 section 6.3.3).  The name itself comes first, so one the store
        refuses (too long, too deep) leaves nothing behind.
        """
        store = self.factory.store
        levels = name.split(SEPARATOR)
        existing = set(await self._storeCall(store.listMailboxes))
        if name in existing:
            raise errors.Exists(name)
        await self._storeCall(store.createMailbox, name)
        for depth in range(1, len(levels)):
            parent = SEPARATOR.join(levels[:depth])
            if parent not in existing:
                try:
                    await self._storeCall(store.createMailbox, parent)
                except errors.Exists:
                    pass  # made meanwhile by another session

    def do_DELETE(self, tag, args):
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0], self.utf8)
        if name == "INBOX":
            return self.no(tag, b"INBOX can't be deleted.", b"CANNOT")
        if self.selected is not None and self.selected.mailbox.name == name:
            self._deselect()
        return self._simpleMailboxCommand(
            tag, self._storeCall(self.factory.store.deleteMailbox, name), b"Delete completed."
        )

    def do_RENAME(self, tag, args):
        if len(args) != 2:
            raise ParseError("Expected two mailbox names")
        old, new = decodeName(args[0], self.utf8), decodeName(args[1], self.utf8)
        return self._simpleMailboxCommand(
            tag, self._storeCall(self.factory.store.renameMailbox, old, new), b"Rename completed."
        )

    def do_SUBSCRIBE(self, tag, args, subscribed=True):
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0], self.utf8)
        return self._simpleMailboxCommand(
            tag,
            self._storeCall(self.factory.store.setSubscribed, name, subscribed),
            b"Subscribe completed." if subscribed else b"Unsubscribe completed.",
        )

    def do_UNSUBSCRIBE(self, tag, args):
        return self.do_SUBSCRIBE(tag, args, subscribed=False)

    # LIST, LSUB

    def do_LIST(self, tag, args, verb=b"LIST"):
        args = list(args)
        selection = []
        if verb == b"LIST" and args and isinstance(args[0], list):
            selection = [self._optionName(o) for o in args.pop(0)]
        if len(args) < 2:
            raise ParseError("Expected reference and mailbox name")
        reference = self._pattern(args[0])
        patterns = args[1] if isinstance(args[1], list) and verb == b"LIST" else [args[1]]
        patterns = [self._pattern(p) for p in patterns]
        returns, statusItems = [], None
        rest = args[2:]
        if rest:
            if verb != b"LIST" or not isAtom(rest[0], "RETURN") or len(rest) != 2 or not isinstance(rest[1], list):
                raise ParseError("Invalid LIST arguments")
            options = rest[1]
            index = 0
            while index < len(options):
                option = self._optionName(options[index])
                if option == "STATUS":
                    index += 1
                    if index >= len(options) or not isinstance(options[index], list):
                        raise ParseError("STATUS needs a list")
                    statusItems = self._statusItems(options[index])
                elif option not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"):
                    raise ParseError("Unknown LIST return option")
                returns.append(option)
                index += 1
        for option in selection:
            if option not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                raise ParseError("Unknown LIST selection option")
        if "RECURSIVEMATCH" in selection and len(set(selection) - {"REMOTE", "RECURSIVEMATCH"}) == 0:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        if patterns == [""] and verb == b"LIST" and not selection:
            self.send(b'* LIST (\\Noselect) "/" ""\r\n')
            return self.complete(tag, b"OK", b"List completed.")
        d = defer.ensureDeferred(self._listing())
        d.addCallback(self._cbList, tag, verb, reference, patterns, selection, returns, statusItems)
        d.addErrback(self._noFromFailure, tag)
        return d

    def do_LSUB(self, tag, args):
        return self.do_LIST(tag, args, verb=b"LSUB")

    @staticmethod
    def _optionName(token):
        if not isinstance(token, Atom):
            raise ParseError("Expected an option name")
        return token.upper()

    def _pattern(self, token):
        """
        @return: a LIST reference or pattern, decoded but otherwise as given.
        """
        raw = astring(token)
        try:
            text = raw.decode("ascii")
            return text if self.utf8 else mutf7.decode(text)
        except UnicodeDecodeError:
            return raw.decode("utf-8", "replace")

    async def _listing(self):
        """
        @return: the L{Listing}; the folders and the subscriptions are asked
            for at once.
        """
        store = self.factory.store
        asked = defer.gatherResults(
            [self._storeCall(store.listMailboxes), self._storeCall(store.listSubscriptions)],
            consumeErrors=True,
        )
        asked.addErrback(lambda failure: failure.value.subFailure)
        names, subscribed = await asked
        return Listing(names, subscribed)

    def _cbList(self, listing, tag, verb, reference, patterns, selection, returns, statusItems):
        matchers = [patternMatcher(reference, p) for p in patterns]

        def matches(name):
            return any(m(name) for m in matchers)

        lines = []
        statusNames = []
        subscribedOnly = verb == b"LSUB" or "SUBSCRIBED" in selection
        specialOnly = "SPECIAL-USE" in selection
        showSubscribed = "SUBSCRIBED" in returns or "SUBSCRIBED" in selection
        candidates = sorted(
            set(listing.names) | set(listing.implied) | (listing.subscribed if subscribedOnly else set()),
            key=lambda n: (n != "INBOX", n),
        )
        for name in candidates:
            extra = b""
            if subscribedOnly:
                if name not in listing.subscribed:
                    if not matches(name) or not listing.subscribedOutside(name, matches):
                        continue
                    if verb == b"LSUB":
                        lines.append(listLine(verb, ["\\Noselect"], name, utf8=self.utf8))
                    elif "RECURSIVEMATCH" in selection:
                        attrs = listing.attributes(name, subscribedFlag=showSubscribed)
                        lines.append(listLine(b"LIST", attrs, name, b' ("CHILDINFO" ("SUBSCRIBED"))', self.utf8))
                    continue
            if not matches(name):
                continue
            attrs = listing.attributes(name, subscribedFlag=showSubscribed and verb == b"LIST")
            if specialOnly and not any(a in ("\\Drafts", "\\Sent", "\\Trash", "\\Junk", "\\Archive") for a in attrs):
                continue
            if verb == b"LSUB":
                attrs = [a for a in attrs if a == "\\Noselect" or a == "\\NonExistent"]
                attrs = ["\\Noselect"] if attrs else []
            lines.append(listLine(verb, attrs, name, extra, self.utf8))
            if statusItems is not None and name in listing.existing:
                statusNames.append(name)
        if statusItems and statusNames:
            self.send(b"".join(lines))
            d = defer.ensureDeferred(self._statusMany(statusNames, statusItems))
            d.addCallback(lambda replies: self.complete(tag, b"OK", b"List completed.",
                                                        responses=b"".join(replies)))
            return d
        return self.complete(tag, b"OK", b"List completed.", responses=b"".join(lines))

    # STATUS

    def _statusItems(self, token):
        """
        The items of STATUS, or of LIST's C{RETURN (STATUS ...)}.  RECENT is
        no item in an IMAP4rev2 session (RFC 9051 section 6.3.11 and
        appendix E): C{BAD}, as Dovecot answers it.

        @return: the item names, in upper case.
        @raise ParseError: for a name that is no status item.
        """
        if not isinstance(token, list) or not token:
            raise ParseError("Expected status items")
        items = []
        for item in token:
            name = self._optionName(item)
            if name not in _STATUS_ITEMS:
                raise ParseError("Unknown status item")
            if name == "RECENT" and self.rev2:
                raise ParseError("RECENT is no status item in IMAP4rev2")
            items.append(name)
        return items

    def do_STATUS(self, tag, args):
        if len(args) != 2:
            raise ParseError("Expected mailbox name and status items")
        name = decodeName(args[0], self.utf8)
        items = self._statusItems(args[1])
        d = defer.ensureDeferred(self._statusMany([name], items))
        d.addCallbacks(lambda replies: self.complete(tag, b"OK", b"Status completed.",
                                                     responses=b"".join(replies)),
                       self._noFromFailure, errbackArgs=(tag,))
        return d

    async def _statusMany(self, names, items):
        """
        @return: C{* STATUS} lines.
        """
        if "HIGHESTMODSEQ" in items:
            self.enableCondStore()  # RFC 7162 section 3.1
        out = []
        for name in names:
            mailbox = await self._storeCall(self.factory.store.openMailbox, name)
            out.append(self.statusResponse(mailbox, items, name))
        return out

    def statusResponse(self, mailbox, items, name=None):
        """
        @param mailbox: an L{mdpy.interfaces.IMailbox}, synced.
        @param items: status item names, as L{_statusItems} gives them.
        @param name: the name to give it, as the client named it; L{None}:
            its own.
        @return: its C{* STATUS} line (RFC 3501 section 7.2.4).
        """
        messages = mailbox.messages()
        values = []
        for item in items:
            if item == "MESSAGES":
                value = len(messages)
            elif item == "RECENT":
                # RFC 3501 section 2.3.2: the messages no session has
                # claimed, and those this session did.
                value = len(recentAmong(mailbox, True, [m.uid for m in messages]))
                selected = self.selected
                if selected is not None and not selected.readOnly and selected.mailbox.name == mailbox.name:
                    value += len(selected.recent)
            elif item == "UIDNEXT":
                value = mailbox.uidNext
            elif item == "UIDVALIDITY":
                value = mailbox.uidValidity
            elif item == "UNSEEN":
                value = sum(1 for m in messages if "\\Seen" not in m.flags)
            elif item == "HIGHESTMODSEQ":
                value = max(1, mailbox.highestModSeq)
            elif item == "DELETED":
                value = sum(1 for m in messages if DELETED in m.flags)
            elif item == "DELETED-STORAGE":
                value = sum(m.size for m in messages if DELETED in m.flags)
            else:
                value = sum(m.size for m in messages)
            values.append(b"%s %d" % (item.encode("ascii"), value))
        name = mailbox.name if name is None else name
        return b"* STATUS %s (%s)\r\n" % (encodeName(name, self.utf8), b" ".join(values))

