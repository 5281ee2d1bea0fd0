# -*- test-case-name: tests.test_imap_append -*-
"""
APPEND (RFC 3501 section 6.3.11) with its extensions, a mixin of
L{mdpy.imap.server.IMAP4Server}: several messages in one command
(MULTIAPPEND, RFC 3502), a message put together from text and parts of
stored messages named by IMAP URLs (CATENATE, RFC 4469; URLs of RFC 5092),
and binary literals C{~{n}} (RFC 3516 section 4.4).

Invariants:
 - All the messages of one APPEND are stored by one
   L{mdpy.interfaces.IMailbox.appendMany}, so all or none are kept, and
   the tagged C{OK} is sent only once they are durable.
 - Every URL is resolved, and every size checked, before anything is
   stored.  A URL names a message of the logged-in account only: a URL
   with another user, URLAUTH, or a message that does not exist is
   answered C{NO [BADURL]} (RFC 4469 section 3.2), whichever the reason.
 - A message, literal or catenated, is at most C{APPENDLIMIT} octets
   (RFC 7889); its literals were bounded as they came
   (L{mdpy.imap.literals}), and large ones are stored from their spool
   files, never read into memory.
"""

import re
from urllib.parse import unquote, unquote_to_bytes

from twisted.internet import defer
from twisted.python.failure import Failure

from mdpy import errors
from mdpy.imap import fetch as fetching
from mdpy.imap.literals import SpooledLiteral
from mdpy.imap.mailboxes import decodeName
from mdpy.imap.quota import dataSize
from mdpy.imap.parser import Atom, Literal8, ParseError, astring, formatSequence, isAtom, parseDateTime
from mdpy.mail import mime

# RFC 5092 section 3 (imessagepart), relative to this server and user
# (RFC 4469 section 3.2) or absolute with the user named.
_URL = re.compile(
    r"(?:imap://(?P<user>[^@/;]+)(?:;AUTH=[^@/]*)?@[^/]+)?"
    r"/(?P<mailbox>[^;?]+?)(?:;UIDVALIDITY=(?P<validity>[1-9][0-9]{0,9}))?"
    r"/;UID=(?P<uid>[1-9][0-9]{0,9})"
    r"(?:/;SECTION=(?P<section>[^/;?]*))?"
    r"(?:/;PARTIAL=(?P<origin>[0-9]{1,10})(?:\.(?P<count>[1-9][0-9]{0,9}))?)?",
    re.IGNORECASE,
)
_URL_RESPONSE = re.compile(rb"[\x00\r\n\]]")
MAX_URL = 8192


class BadUrl(errors.PermanentFailure):
    """
    A CATENATE URL that names no part of a message of this account
    (RFC 4469 section 3.2).

    @ivar url: the URL as sent.
    """

    def __init__(self, url, reason):
        errors.PermanentFailure.__init__(self, reason)
        self.url = url


class AppendedMessage:
    """
    One message of an APPEND.

    @ivar flags: its flags.
    @ivar internalDate: seconds since the epoch, or L{None}.
    @ivar parts: C{("text", literal)} and C{("url", octets)} in order; a
        plain literal is one text part.
    @ivar catenated: whether it was given with CATENATE.
    """

    def __init__(self, flags, internalDate, parts, catenated):
        self.flags = flags
        self.internalDate = internalDate
        self.parts = parts
        self.catenated = catenated


def _isLiteral(token):
    return isinstance(token, (bytes, SpooledLiteral, Literal8))


def _startsMessage(tokens, index):
    """
    @return: whether C{tokens[index]} starts the data of a message: a
        literal, or C{CATENATE (...)}.
    """
    if index >= len(tokens):
        return False
    token = tokens[index]
    return _isLiteral(token) or (
        (isAtom(token, "CATENATE") or isAtom(token, "UTF8"))
        and index + 1 < len(tokens) and isinstance(tokens[index + 1], list)
    )


def _isDate(token):
    """
    @return: whether C{token}, followed by the data of a message, is the
        C{date-time} of that message (RFC 3501 section 9) rather than the
        message of a MULTIAPPEND: a string and a literal look alike once
        read, and a date is one short line, never a message.
    """
    return isinstance(token, bytes) and len(token) <= 40 and b"\n" not in token


def _catenateParts(tokens):
    """
    @return: the parts of C{CATENATE (...)} (RFC 4469 section 5:
        C{cat-part = text-literal / url}).
    """
    if not tokens or len(tokens) % 2:
        raise ParseError("Expected TEXT and URL parts")
    parts = []
    for kind, value in zip(tokens[::2], tokens[1::2]):
        if isAtom(kind, "TEXT") and _isLiteral(value):
            parts.append(("text", value))
        elif isAtom(kind, "URL") and isinstance(value, (Atom, bytes, SpooledLiteral)):
            if len(value) > MAX_URL:
                raise ParseError("URL too long")
            if isinstance(value, SpooledLiteral):
                value = value.open().read()
            parts.append(("url", astring(value)))
        else:
            raise ParseError("Expected TEXT literal or URL string")
    return parts


def _utf8Literal(tokens):
    """
    @return: the literal of C{UTF8 (~{n}...)} (RFC 6855 section 4).
    """
    if len(tokens) == 1 and isinstance(tokens[0], Literal8):
        return tokens[0]
    raise ParseError("Expected UTF8 (~{n}message)")


def parseAppend(args, flagList, utf8=False):
    """
    @param args: the tokens after C{APPEND}.
    @param flagList: turns a flag list token into flags.
    @param utf8: whether the session enabled UTF8=ACCEPT (RFC 6855): the
        mailbox name is UTF-8, and a message may be given as
        C{UTF8 (~{n}...)}.
    @return: C{(mailbox name, [AppendedMessage])} (RFC 3502 section 6:
        C{append = "APPEND" SP mailbox 1*append-message}).
    @raise ParseError: not well formed.
    """
    if len(args) < 2:
        raise ParseError("Expected mailbox name and message")
    name = decodeName(args[0], utf8)
    messages = []
    index = 1
    while index < len(args):
        flags = frozenset()
        internalDate = None
        if isinstance(args[index], list):
            flags = flagList(args[index])
            index += 1
        if index < len(args) and _isDate(args[index]) and _startsMessage(args, index + 1):
            internalDate = parseDateTime(args[index])
            index += 1
        if not _startsMessage(args, index):
            raise ParseError("Expected a message literal")
        if isAtom(args[index], "UTF8"):
            if not utf8:
                raise ParseError("UTF8 needs ENABLE UTF8=ACCEPT")
            messages.append(AppendedMessage(flags, internalDate, [("text", _utf8Literal(args[index + 1]))], False))
            index += 2
        elif isinstance(args[index], Atom):
            messages.append(AppendedMessage(flags, internalDate, _catenateParts(args[index + 1]), True))
            index += 2
        else:
            messages.append(AppendedMessage(flags, internalDate, [("text", args[index])], False))
            index += 1
    return name, messages


def _storable(literal):
    """
    @return: what L{mdpy.interfaces.IMailbox.appendMany} takes for a
        literal: its octets, or its spool file (a binary literal with
        binary MIME parts rewritten as base64, L{mime.binaryAsBase64}).
    """
    binary = isinstance(literal, Literal8)
    if binary:
        literal = literal.value
    if isinstance(literal, SpooledLiteral):
        if not (binary and literal.containsNul):
            return literal.open()
        literal = literal.open().read()
    if binary and b"\x00" in literal:
        return mime.binaryAsBase64(literal, mime.parseMessage(literal))
    return literal


class AppendCommands:
    """
    The APPEND command of L{mdpy.imap.server.IMAP4Server}.
    """

    def do_APPEND(self, tag, args):
        name, messages = parseAppend(args, self._flagList, self.utf8)
        limit = self.factory.maxMessageSize
        for message in messages:
            if not message.catenated and len(message.parts[0][1]) > limit:
                return self.no(tag, b"Message too large.", b"TOOBIG")
        return defer.ensureDeferred(self._append(tag, name, messages))

    async def _append(self, tag, name, messages):
        try:
            selected = self.selected
            if selected is not None and selected.mailbox.name == name:
                # Into the selected mailbox through its view: the messages
                # are claimed (\Recent) and taken into the view by the
                # transaction that adds them, not by a second one.
                mailbox = selected.mailbox
            else:
                try:
                    mailbox = await self._storeCall(self.factory.store.openMailbox, name)
                except errors.NotFound:
                    self._ebTryCreate(Failure())
            ready = []
            for message in messages:
                ready.append((await self._messageParts(message), message.flags, message.internalDate))
            await self.checkQuota(sum(dataSize(data) for data, _, _ in ready), len(ready))
            try:
                uids = await defer.maybeDeferred(mailbox.appendMany, ready)
            except errors.NotFound:
                self._ebTryCreate(Failure())
        except BadUrl as e:
            self.log.info("imap: {user}: bad CATENATE URL: {reason}", user=self.account, reason=e)
            return self.no(tag, b"Bad URL.", b"BADURL " + _URL_RESPONSE.sub(b"", e.url)[:1024])
        except Exception:
            return self._noFromFailure(Failure(), tag)
        if self.closing:
            return None
        if self.selected is not None and self.selected.mailbox.name == name:
            self.selected.dirty = True
        code = b"APPENDUID %d %s" % (mailbox.uidValidity, formatSequence(uids))
        return self.complete(tag, b"OK", b"Append completed.", code)

    async def _messageParts(self, message):
        """
        @return: the octets and files of one message, its URLs resolved.
        @raise BadUrl: a URL names nothing this account has.
        @raise mdpy.errors.TooBig: the parts together pass APPENDLIMIT.
        """
        if not message.catenated:
            return _storable(message.parts[0][1])
        parts, size = [], 0
        for kind, value in message.parts:
            if kind == "url":
                value = await self._resolveUrl(value)
            size += len(value)
            if size > self.factory.maxMessageSize:
                raise errors.TooBig("catenated message past APPENDLIMIT")
            parts.append(_storable(value))
        return parts

    async def _resolveUrl(self, url):
        """
        @return: the octets an IMAP URL (RFC 5092 section 3) names: a
            message of this account, a section of it (as FETCH
            C{BODY.PEEK[section]}), a range of that; reading it sets no
            flag.
        @raise BadUrl: it names nothing this account has.
        """
        text = url.decode("utf-8", "replace")
        match = _URL.fullmatch(text)
        if match is None:
            raise BadUrl(url, "not an IMAP message URL of this server")
        user = match.group("user")
        if user is not None and unquote(user).lower() != str(self.account).lower():
            raise BadUrl(url, "names another user")
        try:
            name = decodeName(unquote_to_bytes(match.group("mailbox")))
            mailbox = await self._storeCall(self.factory.store.openMailbox, name)
        except (ParseError, errors.MailError) as e:
            raise BadUrl(url, "no such mailbox: %s" % (e,))
        validity = match.group("validity")
        if validity is not None and int(validity) != mailbox.uidValidity:
            raise BadUrl(url, "UIDVALIDITY changed")
        uid = int(match.group("uid"))
        message = next((m for m in mailbox.messages() if m.uid == uid), None)
        if message is None:
            raise BadUrl(url, "no such message")
        try:
            data = await message.read()
        except errors.NotFound:
            raise BadUrl(url, "message expunged")
        section = match.group("section")
        if section:
            try:
                request = fetching.parseFetchItems(Atom("BODY.PEEK[%s]" % (unquote(section),)))
            except ParseError:
                raise BadUrl(url, "bad section")
            structure = None
            if request.needsStructure:
                structure = self.factory.structures.get(message, data, mailbox)
            data = fetching.sectionData(request.sections[0], data, structure)
            if data is None:
                raise BadUrl(url, "no such section")
        origin = match.group("origin")
        if origin is not None:
            count = match.group("count")
            data = data[int(origin) : int(origin) + int(count)] if count else data[int(origin) :]
        return data
