# -*- test-case-name: tests.test_imap_sort -*-
"""
The SORT and THREAD commands and their UID forms (RFC 5256, RFC 5267
ESORT, RFC 5957 SORT=DISPLAY), a mixin of
L{mdpy.imap.server.IMAP4Server} over L{mdpy.imap.messages.MessageCommands}.

The messages are chosen by the SEARCH machinery (the criteria of the
command); what they are ordered by is read from each message's header once
and kept in the factory's L{mdpy.imap.sort.SortFieldCache}, so only
messages not seen before are read.

Invariants: like SEARCH, SORT and THREAD by sequence number send no
EXPUNGE response (RFC 3501 section 7.4.1).
"""

from twisted.internet import defer

from mdpy import errors
from mdpy.imap import search as searching
from mdpy.imap import sort as sorting
from mdpy.imap import thread as threads
from mdpy.imap.messages import _ReadAhead, _SearchContext

CAPABILITIES = (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES")

_BAD_CHARSET = b"BADCHARSET (US-ASCII UTF-8)"


class SortCommands:
    """
    SORT, THREAD, UID SORT and UID THREAD of
    L{mdpy.imap.server.IMAP4Server}; needs C{factory.sortFields}, a
    L{mdpy.imap.sort.SortFieldCache}.
    """

    def do_SORT(self, tag, args, uid=False):
        try:
            command = sorting.parseSortCommand(args)
        except searching.BadCharset:
            return self.no(tag, b"Unsupported charset.", _BAD_CHARSET)
        self.checkSearchKeys(command.search.criteria)
        search = command.search
        if search.update:
            self.checkContextTag(tag, search.criteria)
            messages = self.selected.messagesAt(range(self.selected.count))
        d = defer.ensureDeferred(self._sortables(search.criteria, uid))
        if search.update:
            d.addCallback(self.startContext, tag, uid, search.criteria, messages, command.keys)
        d.addCallback(self._cbSorted, tag, uid, command)
        return d

    def _cbSorted(self, items, tag, uid, command):
        if self.closing:
            return None
        ordered = sorting.sortMessages(items, command.keys)
        self.send(sorting.formatSortResponse(tag, uid, command, ordered))
        return self.complete(tag, b"OK", b"Sort completed.", expunge=uid)

    def do_THREAD(self, tag, args, uid=False):
        try:
            command = threads.parseThreadCommand(args)
        except searching.BadCharset:
            return self.no(tag, b"Unsupported charset.", _BAD_CHARSET)
        self.checkSearchKeys(command.search.criteria)
        d = defer.ensureDeferred(self._sortables(command.search.criteria, uid))
        d.addCallback(self._cbThreaded, tag, uid, command)
        return d

    def _cbThreaded(self, items, tag, uid, command):
        if self.closing:
            return None
        if command.algorithm == "REFERENCES":
            roots = threads.references(items)
        else:
            roots = threads.orderedSubject(items)
        self.send(threads.formatThreadResponse(roots))
        return self.complete(tag, b"OK", b"Thread completed.", expunge=uid)

    async def _sortables(self, criteria, uid):
        """
        @return: a L{mdpy.imap.sort.Sortable} for each message of the view
            that C{criteria} matches, in mailbox order; a message is read
            only when the criteria or its sort fields need it, and one
            removed meanwhile is left out.
        """
        if criteria.usesModSeq:
            self.enableCondStore()
        selected = self.selected
        messages = selected.messagesAt(range(selected.count))
        context = _SearchContext(selected, self.factory.clock.seconds())
        matches = await self._search(messages, criteria, context)
        cache = self.factory.sortFields
        chosen = selected.messagesAt([sequence - 1 for sequence, _, _ in matches])
        reads = _ReadAhead(chosen, lambda message: cache.cached(message) is None)
        items = []
        for index, message in enumerate(chosen):
            if self.closing:
                break
            try:
                fields = cache.cached(message)
                if fields is None:
                    data = await reads.read(index)
                    if data is None:  # dropped from the cache meanwhile
                        data = await message.read()
                    fields = cache.get(message, data)
                sequence = selected.sequence(message)
                # Its size and internal date may be read from the store too.
                items.append(sorting.Sortable(sequence, message.uid if uid else sequence, message, fields))
            except (errors.NotFound, OSError):
                continue
        return items
