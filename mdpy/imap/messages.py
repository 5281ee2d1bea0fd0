# -*- test-case-name: tests.test_imap_server -*-
"""
The commands on the messages of the selected mailbox (RFC 3501 sections
6.4.3 to 6.4.8, RFC 4315 UID EXPUNGE and COPYUID, RFC 6851 MOVE, RFC 7162
CHANGEDSINCE, UNCHANGEDSINCE and VANISHED), a mixin of L{mdpy.imap.server.IMAP4Server}.

Invariants: sequence numbers are those of the session's view
(L{mdpy.imap.selected}); FETCH, STORE and SEARCH by sequence number end with
C{expunge=False}, whether they succeed or fail, so no EXPUNGE response
renumbers messages under them (RFC 3501 section 7.4.1).
"""

from twisted.internet import defer, interfaces as iinternet
from twisted.python.failure import Failure
from zope.interface import implementer

from mdpy import errors
from mdpy.imap import fetch as fetching
from mdpy.imap import resync as resyncing
from mdpy.imap import search as searching
from mdpy.imap.mailboxes import decodeName
from mdpy.imap.parser import Atom, ParseError, SequenceSet, formatSequence, isAtom, number64
from mdpy.imap.selected import vanishedResponse
from mdpy.mail.mime import UnknownEncoding
from mdpy.mailbox import ADD, DELETED, REMOVE, REPLACE, SEEN, changedFlags, storableFlags

CHUNK = 64 * 1024
# Messages read ahead of the one being answered (FETCH, SEARCH), so the
# store's round trips to its thread pool overlap.
READ_AHEAD = 16
_UID_COMMANDS = {"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE", "SORT", "THREAD"}
_STORE_MODES = {"FLAGS": REPLACE, "+FLAGS": ADD, "-FLAGS": REMOVE}


@implementer(iinternet.IPushProducer)
class _Output:
    """
    Flow control for a long response: the transport says when its buffer is
    full, and L{wait} holds the response until it has drained.
    """

    def __init__(self, transport):
        self.transport = transport
        self.paused = False
        self._waiting = None
        transport.registerProducer(self, True)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    stopProducing = resumeProducing

    def wait(self):
        self._waiting = defer.Deferred()
        return self._waiting

    def finish(self):
        self.transport.unregisterProducer()


class _SearchContext:
    """
    What a SEARCH criterion may ask of the session (L{mdpy.imap.search}).
    """

    def __init__(self, selected, now):
        self.selected = selected
        self.count = selected.count
        self.largestUid = selected.largestUid
        self.now = now
        self.read = (None, None)

    def sequence(self, message):
        return self.selected.sequence(message)

    def isRecent(self, message):
        return self.selected.isRecent(message)

    def isSaved(self, message):
        return message.uid in self.selected.saved

    def content(self, message):
        """
        @return: the octets of C{message}, read beforehand (L{read} is
            C{(message, octets)}).
        """
        loaded, data = self.read
        if loaded is not message:
            raise errors.NotFound("message %s was not read" % (message.key,))
        return data




class _ReadFailed:
    """
    A read that failed, kept as a value so a read left unused is no
    unhandled error.
    """

    def __init__(self, failure):
        self.failure = failure


class _ReadAhead:
    """
    The octets of the messages a command goes through in order, read by
    the store up to L{READ_AHEAD} messages ahead.

    @ivar wanted: C{wanted(message)}: whether a message must be read.
    """

    def __init__(self, messages, wanted):
        self._messages = messages
        self.wanted = wanted
        self._reads = {}
        self._next = 0

    def readLater(self, index):
        """
        @return: a L{Deferred} of the octets of message C{index} (failing
            with L{mdpy.errors.NotFound} when it was removed meanwhile), or
            L{None} when it is not wanted, so that nothing is awaited.
        """
        end = min(index + 1 + READ_AHEAD, len(self._messages))
        while self._next < end:
            message = self._messages[self._next]
            if self.wanted(message):
                # maybeDeferred: a read may also raise at once (NotFound,
                # L{IStoredMessage.read}), which is that message's alone.
                self._reads[self._next] = defer.maybeDeferred(message.read).addErrback(_ReadFailed)
            self._next += 1
        d = self._reads.pop(index, None)
        return None if d is None else d.addCallback(_readResult)

    async def read(self, index):
        """
        @return: the octets of message C{index}, or L{None} when it is not
            wanted.
        @raise mdpy.errors.NotFound: it was removed meanwhile.
        """
        d = self.readLater(index)
        return None if d is None else await d


def _readResult(result):
    if isinstance(result, _ReadFailed):
        result.failure.raiseException()
    return result


class MessageCommands:
    """
    The commands of L{mdpy.imap.server.IMAP4Server} on the messages of the
    selected mailbox: FETCH, STORE, SEARCH, EXPUNGE, COPY, MOVE and their UID
    forms.
    """
    def _resolve(self, token, uid):
        """
        @return: the messages of the view a sequence set names, or C{$}:
            those of the saved search result still there (RFC 5182 section
            2.2), for UID commands too.
        """
        selected = self.selected
        if isAtom(token, "$"):
            return selected.messagesAt([i for i, u in enumerate(selected.uids) if u in selected.saved])
        sequence = SequenceSet.parse(token)
        if uid:
            indexes = sequence.selectSorted(selected.uids)
        else:
            # RFC 3501 section 9: a number past the last message (or "*" in
            # an empty mailbox) is an error.
            for low, high in sequence.ranges:
                if max(low or 0, high or 0) > selected.count or (selected.count == 0):
                    raise ParseError("Invalid messageset")
            indexes = sequence.indexes(selected.count)
        return selected.messagesAt(indexes)

    def enableCondStore(self):
        """
        Enable CONDSTORE for the rest of the session on a CONDSTORE enabling
        command (RFC 7162 section 3.1): the first one in the selected state
        is answered with C{OK [HIGHESTMODSEQ]}, and from then on every
        untagged FETCH that a STORE, a FETCH setting C{\\Seen} or another
        session causes carries the UID and the MODSEQ.
        """
        if "CONDSTORE" in self.enabled:
            return
        self.enabled.add("CONDSTORE")
        if self.selected is not None:
            self.send(b"* OK [HIGHESTMODSEQ %d] Highest.\r\n" % (max(1, self.selected.reportedModSeq),))

    def do_UID(self, tag, args):
        if not args or not isinstance(args[0], Atom) or args[0].upper() not in _UID_COMMANDS:
            raise ParseError("Unknown UID command")
        verb = args[0].upper()
        return getattr(self, "do_" + verb)(tag, args[1:], uid=True)

    # FETCH

    def do_FETCH(self, tag, args, uid=False):
        if len(args) not in (2, 3):
            raise ParseError("Expected a message set and data items")
        messages = self._resolve(args[0], uid)
        request = fetching.parseFetchItems(args[1])
        changedSince, vanished = None, None
        if len(args) == 3:
            changedSince, wantVanished = resyncing.parseFetchModifiers(args[2], uid)
            if wantVanished:
                if "QRESYNC" not in self.enabled:
                    raise ParseError("QRESYNC must be enabled first")  # RFC 7162 section 3.2.6
                vanished = (SequenceSet.parse(args[0]), changedSince)
        if changedSince is not None or "MODSEQ" in request.items:
            self.enableCondStore()
        # Once QRESYNC is enabled every FETCH response carries the UID:
        # the client tracks messages by UID (RFC 7162 section 3.2).
        if (uid or "QRESYNC" in self.enabled) and "UID" not in request.items:
            request.items.insert(0, "UID")
        if changedSince is not None:
            request.ensure("MODSEQ")
            messages = [m for m in messages if m.modSeq > changedSince]
        return defer.ensureDeferred(self._fetch(tag, messages, request, uid, vanished))

    async def _fetch(self, tag, messages, request, uid, vanished=None):
        """
        Answer FETCH.  A message another session expunged keeps its
        number until the expunge may be reported, and is answered with
        what the session's view still knows (RFC 2180 section 4.1.3): a
        message is never refused, and, as Dovecot does, the command ends
        with C{OK [EXPUNGEISSUED]} when data gone with a message was
        answered as NIL (L{fetching.renderItems}).

        @param vanished: L{None}, or for UID FETCH (VANISHED) the UID set
            asked for and the CHANGEDSINCE modification sequence: the
            UIDs of the set expunged since then come first, in C{VANISHED
            (EARLIER)} (RFC 7162 section 3.2.6).
        """
        selected = self.selected
        if vanished is not None:
            uids, changedSince = vanished
            try:
                removed = await defer.maybeDeferred(selected.mailbox.expungedSince, changedSince)
            except Exception:
                removed = self._ebExpungedSince(Failure())
            if self.closing or self.selected is not selected:
                return None
            # "*" reaches up to the last UID given out, which the
            # client may know though it is expunged.
            within = uids.bounds(max(selected.largestUid, selected.mailbox.uidNext - 1))
            self.send(vanishedResponse(selected.vanishedEarlier(removed, within), earlier=True))
        lost = []
        seenNow = {}
        if request.setsSeen and not selected.readOnly:
            unseen = [m.uid for m in messages if SEEN not in m.flags and m.uid not in selected.gone]
            if unseen:
                # RFC 3501 section 6.4.5: BODY[] sets \Seen, added to the
                # flags as stored now.
                try:
                    stored = await defer.maybeDeferred(selected.mailbox.changeFlags, unseen, [SEEN], ADD)
                except Exception:
                    self.log.failure("imap: cannot set \\Seen for {user}", user=self.account)
                    stored = {}
                current = {m.uid: m for m in selected.mailbox.messages()}
                seenNow = {u: result.flags for u, result in stored.items()}
                messages = [current.get(m.uid, m) if m.uid in seenNow else m for m in messages]
        tail = []
        unknownEncoding = await self.writeFetchResponses(selected, messages, request, seenNow, lost, tail)
        if self.closing:
            return None
        responses = b"".join(tail)
        if unknownEncoding:
            # RFC 3516 section 4.3.
            return self.complete(tag, b"NO", b"Unknown Content-Transfer-Encoding.", b"UNKNOWN-CTE", expunge=uid,
                                 responses=responses)
        if lost:
            return self.complete(tag, b"OK", b"Some messages were already expunged.", b"EXPUNGEISSUED",
                                 expunge=uid, responses=responses)
        return self.complete(tag, b"OK", b"Fetch completed.", expunge=uid, responses=responses)

    async def writeFetchResponses(self, selected, messages, request, seenNow, lost, tail=None):
        """
        Send the C{FETCH} responses of C{messages} (of the view
        C{selected}), written as they are made, waiting while the client
        does not read.  A message is read only for what memory does not
        hold: its structure and, when only its header block is asked, that
        block (L{fetching.StructureCache.inMemory}).

        @param seenNow: C{{uid: flags}} of those C{\\Seen} was just set
            on: their flags are sent too.
        @param lost: where the messages gone with their data are added
            (L{fetching.renderItems}).
        @param tail: a list the last responses are added to rather than
            written, for the caller to send with its reply in one write.
        @return: whether a message had a Content-Transfer-Encoding BINARY
            cannot decode (those are left out).
        """
        unknownEncoding = False
        output = _Output(self.transport) if len(messages) > 64 or request.needsContent else None
        structures = self.factory.structures

        def inMemory(message):
            # Only the header block is asked, and memory holds it with the
            # structure: no file is read.  A message known to be expunged
            # is looked for where it was, so the answer says what is gone.
            if not request.headerOnly or message.uid in selected.gone:
                return None
            return structures.inMemory(message)

        def wanted(message):
            if request.needsContent:
                return inMemory(message) is None
            return request.needsStructure and structures.cached(message) is None

        reads = _ReadAhead(messages, wanted)

        async def contentOf(index, message):
            """
            @return: C{(data, structure)} of the message, what the request
                needs of them; L{None} for what is gone with it.
            """
            data = structure = None
            try:
                data = reads.readLater(index)
                if data is not None:
                    data = await data
                if data is None and request.needsContent:
                    held = inMemory(message)
                    if held is None:  # dropped from memory meanwhile
                        data = await message.read()
                    else:
                        data, structure = held
                if request.headerOnly and structure is None:
                    # Parsed (or found) and its header block kept, so the
                    # next such FETCH reads no file.
                    structure = structures.get(message, data, selected.mailbox)
                if request.needsStructure and structure is None:
                    structure = structures.cached(message)
                if request.needsStructure and structure is None:
                    if data is None:  # dropped from the cache meanwhile
                        data = await message.read()
                    structure = structures.get(message, data, selected.mailbox)
            except (errors.NotFound, OSError):
                data = None
                if request.needsStructure:
                    structure = structures.cached(message)
            return data, structure

        # Items of the index alone (FLAGS, UID, sizes, dates), as a client
        # syncing a folder's flags asks: nothing is read or parsed.
        plain = not (request.needsContent or request.needsStructure or request.sections)
        withFlags = None
        try:
            pending = []
            size = 0
            for index, message in enumerate(messages):
                if self.closing:
                    return unknownEncoding
                data, structure = (None, None) if plain else await contentOf(index, message)
                items = request
                flags = seenNow.get(message.uid, message.flags)
                if message.uid in seenNow:
                    if withFlags is None:
                        # RFC 3501 section 6.4.5 and RFC 7162 section 3.1:
                        # the flags changed, with UID and MODSEQ under
                        # CONDSTORE.
                        added = ["UID", "FLAGS", "MODSEQ"] if "CONDSTORE" in self.enabled else ["FLAGS"]
                        withFlags = fetching.FetchRequest(
                            request.items + [name for name in added if name not in request.items], request.sections
                        )
                    items = withFlags
                    announced = selected.announceKeywords(flags)
                    if announced:
                        pending.append(announced)
                if "FLAGS" in items.items:
                    selected.noteFlags(message, flags)
                try:
                    body = fetching.renderItems(items, message, flags, selected.isRecent(message), data, structure,
                                                lost)
                except UnknownEncoding:
                    unknownEncoding = True
                    continue
                pending.append(b"* %d FETCH %s\r\n" % (selected.sequence(message), body))
                size += len(body)
                if size >= CHUNK:
                    self.transport.write(b"".join(pending))
                    pending, size = [], 0
                    if output is not None and output.paused:
                        await output.wait()
            if pending:
                if tail is None:
                    self.transport.write(b"".join(pending))
                else:
                    tail.append(b"".join(pending))
        finally:
            if output is not None:
                output.finish()
        return unknownEncoding

    # STORE

    def do_STORE(self, tag, args, uid=False):
        if len(args) < 3:
            raise ParseError("Expected message set, item and flags")
        messages = self._resolve(args[0], uid)
        rest = list(args[1:])
        unchangedSince = None
        if isinstance(rest[0], list):
            modifier = rest.pop(0)
            if len(modifier) != 2 or not isAtom(modifier[0], "UNCHANGEDSINCE"):
                raise ParseError("Unknown STORE modifier")
            unchangedSince = number64(modifier[1])
        if len(rest) < 2 or not isinstance(rest[0], Atom):
            raise ParseError("Expected item and flags")
        item = rest[0].upper()
        silent = item.endswith(".SILENT")
        if silent:
            item = item[: -len(".SILENT")]
        if item not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise ParseError("Invalid STORE item")
        flagTokens = rest[1] if len(rest) == 2 and isinstance(rest[1], list) else rest[1:]
        flags = storableFlags(self._flagList(flagTokens))
        if self.selected.readOnly:
            return self.no(tag, b"Mailbox is read-only.", b"READ-ONLY", expunge=uid)
        if unchangedSince is not None:
            self.enableCondStore()
        return defer.ensureDeferred(self._store(tag, messages, item, flags, silent, unchangedSince, uid))

    async def _store(self, tag, messages, item, flags, silent, unchangedSince, uid):
        """
        Apply the change where the flags are stored (L{IMailbox.changeFlags}),
        never by writing back this session's copy, so a change another
        session made meanwhile is kept; the FETCH responses report the flags
        the store now holds (RFC 3501 section 6.4.6).
        """
        selected = self.selected
        mailbox = selected.mailbox
        uids = [m.uid for m in messages if m.uid not in selected.gone]
        results, failure = {}, None
        if uids:
            try:
                results = await defer.maybeDeferred(
                    mailbox.changeFlags, uids, flags, _STORE_MODES[item], unchangedSince
                )
            except Exception:
                failure = Failure()
        if self.closing:
            return None
        current = {m.uid: m for m in mailbox.messages()}
        condstore = "CONDSTORE" in self.enabled
        modified, lines = [], []
        for messageUid in sorted(results):
            stored = results[messageUid]
            if unchangedSince is not None and not stored.changed:
                modified.append(messageUid)
                continue
            message = current.get(messageUid)
            if message is None:
                continue
            announced = selected.announceKeywords(stored.flags)
            if announced:
                lines.append(announced)
            if silent:
                # The client knows the flags it asked for; any others
                # (another session's change) are reported as updates.
                believed = changedFlags(selected.flags.get(messageUid, frozenset()), flags, _STORE_MODES[item])
                selected.noteFlags(message, believed)
                if not (condstore and stored.changed):
                    continue
            else:
                selected.noteFlags(message, stored.flags)
            items = []
            if uid or condstore:
                items.append(b"UID %d" % (messageUid,))
            if not silent:
                items.append(b"FLAGS " + fetching.formatFlags(stored.flags, selected.isRecent(message)))
            if condstore:
                items.append(b"MODSEQ (%d)" % (stored.modSeq,))
            lines.append(b"* %d FETCH (%s)\r\n" % (selected.sequence(message), b" ".join(items)))
        if failure is not None:
            if lines:
                self.send(b"".join(lines))
            return self._noFromFailure(failure, tag, expunge=uid)
        if modified:
            numbers = modified if uid else [
                selected.sequence(current.get(u) or selected.messages[u]) for u in modified
            ]
            return self.complete(tag, b"OK", b"Conditional store failed.",
                                 b"MODIFIED " + formatSequence(sorted(numbers)), expunge=uid,
                                 responses=b"".join(lines))
        return self.complete(tag, b"OK", b"Store completed.", expunge=uid, responses=b"".join(lines))

    # SEARCH

    def do_SEARCH(self, tag, args, uid=False):
        try:
            command = searching.parseSearchCommand(args)
            self.checkSearchKeys(command.criteria)
        except (ParseError, searching.BadCharset) as e:
            if searching.mentionsSave(args):
                self.selected.saved = frozenset()
            if isinstance(e, ParseError):
                raise
            return self.no(tag, b"Unsupported charset.", b"BADCHARSET (US-ASCII UTF-8)", expunge=uid)
        if self.rev2 and command.returnOptions is None:
            command.returnOptions = []  # ESEARCH, ALL implied (RFC 9051 section 6.4.4)
        selected = self.selected
        if command.criteria.usesModSeq:
            self.enableCondStore()
        messages = selected.messagesAt(range(selected.count))
        context = _SearchContext(selected, self.factory.clock.seconds())
        if command.update:
            self.checkContextTag(tag, command.criteria)
        d = defer.ensureDeferred(self._search(messages, command.criteria, context))
        if command.update:
            d.addCallback(self.startContext, tag, uid, command.criteria, messages)
        d.addCallback(self._cbSearched, tag, uid, command)
        return d

    async def _search(self, messages, criteria, context):
        """
        @return: C{(sequence number, UID, modification sequence)} of each of
            C{messages} that C{criteria} matches; a message is read (by the
            store, off the reactor thread) only when a criterion looks at
            its content.
        """
        matches = []
        reads = _ReadAhead(messages, lambda message: criteria.needsContent)
        for index, message in enumerate(messages):
            if self.closing:
                break
            try:
                if criteria.needsContent:
                    context.read = (message, await reads.read(index))
                if criteria.match(message, context):
                    matches.append((context.sequence(message), message.uid, message.modSeq))
            except (errors.NotFound, OSError):
                continue
        return matches

    def _cbSearched(self, matches, tag, uid, command):
        if self.closing:
            return None
        saved = searching.savedResult(command, matches)
        if saved is not None:
            self.selected.saved = saved
        return self.complete(tag, b"OK", b"Search completed.", expunge=uid,
                             responses=searching.formatSearchResponse(tag, uid, command, matches))

    # EXPUNGE

    def do_EXPUNGE(self, tag, args, uid=False):
        selected = self.selected
        restrict = None
        if uid:
            if len(args) != 1:
                raise ParseError("Expected a UID set")
            restrict = {m.uid for m in self._resolve(args[0], True)}
        elif args:
            raise ParseError("EXPUNGE takes no arguments")
        if selected.readOnly:
            return self.no(tag, b"Mailbox is read-only.", b"READ-ONLY")
        doomed = [
            m.uid for m in selected.mailbox.messages()
            if DELETED in m.flags and (restrict is None or m.uid in restrict)
        ]
        if not doomed:
            return self.complete(tag, b"OK", b"Expunge completed.")
        d = defer.maybeDeferred(selected.mailbox.expunge, doomed, deletedOnly=True)
        d.addCallbacks(lambda _: self.complete(tag, b"OK", b"Expunge completed."),
                       self._noFromFailure, errbackArgs=(tag,))
        return d

    # COPY, MOVE

    def do_COPY(self, tag, args, uid=False, move=False):
        if len(args) != 2:
            raise ParseError("Expected message set and mailbox name")
        messages = self._resolve(args[0], uid)
        name = decodeName(args[1], self.utf8)
        if move and self.selected.readOnly:
            return self.no(tag, b"Mailbox is read-only.", b"READ-ONLY")
        return defer.ensureDeferred(self._copy(tag, messages, name, uid, move))

    def do_MOVE(self, tag, args, uid=False):
        return self.do_COPY(tag, args, uid, move=True)

    async def _copy(self, tag, messages, name, uid, move):
        selected = self.selected
        try:
            target = await self._storeCall(self.factory.store.openMailbox, name)
        except errors.NotFound:
            return self.no(tag, b"Mailbox doesn't exist.", b"TRYCREATE")
        except Exception:
            return self._noFromFailure(Failure(), tag)
        pairs = []
        try:
            copied = [m for m in messages if m.uid not in selected.gone]
            if copied and not move:
                # A MOVE leaves the account as full as it was.
                await self.checkQuota(sum(m.size for m in copied), len(copied))
            for message in messages:
                if message.uid in selected.gone:
                    continue
                try:
                    data = await message.read()
                    internalDate = message.internalDate
                except (errors.NotFound, OSError):
                    # Expunged by another session meanwhile: the others
                    # are copied (RFC 2180 section 4.4).
                    continue
                newUid = await defer.maybeDeferred(target.append, data, message.flags, internalDate)
                pairs.append((message.uid, newUid))
        except Exception:
            return self._noFromFailure(Failure(), tag)
        if self.closing:
            return None
        if target.name == selected.mailbox.name:
            selected.dirty = True
        if not pairs:
            return self.complete(tag, b"OK", b"No messages found.", expunge=uid or move)
        # Messages are copied in UID order and get ascending UIDs, so both
        # sets list them in the same order (RFC 4315 section 3).
        code = b"COPYUID %d %s %s" % (
            target.uidValidity,
            formatSequence([p[0] for p in pairs]),
            formatSequence([p[1] for p in pairs]),
        )
        if not move:
            return self.complete(tag, b"OK", b"Copy completed.", code, expunge=uid)
        self.send(b"* OK [" + code + b"] Moved UIDs.\r\n")
        try:
            await defer.maybeDeferred(selected.mailbox.expunge, [p[0] for p in pairs])
        except Exception:
            return self._noFromFailure(Failure(), tag)
        return self.complete(tag, b"OK", b"Move completed.")
