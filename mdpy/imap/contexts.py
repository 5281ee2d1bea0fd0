# -*- test-case-name: tests.test_imap_contexts -*-
"""
Updating searches and sorts: CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267
section 4), a mixin of L{mdpy.imap.server.IMAP4Server}.

A SEARCH or SORT with C{RETURN (UPDATE)} leaves a context behind, named by
the command's tag: while the mailbox stays selected, each time the session
sends what its view owes the client it tells it too how the result
changed, as messages arrive, change flags or are expunged (by this session
or another, IDLE included), in C{* ESEARCH (TAG "t") ADDTO (...)} and
C{REMOVEFROM (...)} responses (section 4.3); C{CANCELUPDATE "t"} ends a
context (section 4.3.5), and so does leaving the mailbox.

How a result changed is found by testing again only the messages that
changed since they were last tested (all of them when the keys name
sequence numbers, C{RECENT} or the time); what the content keys found in a
message is kept (L{mdpy.imap.search.Criteria.rememberContent}), so only a
message new to the context is read, before the updates are sent
(L{ContextCommands.prepareContexts}).

Invariants: a C{REMOVEFROM} for messages being expunged goes before the
C{EXPUNGE} responses, numbered as they were; an C{ADDTO} for new messages
after C{EXISTS} (section 4.3.3 and 4.3.4).  A session keeps at most
L{MAX_CONTEXTS} contexts; past that, a search is answered without one and
C{* NO [NOUPDATE "t"]} says so (section 4.3.1).
"""

from bisect import bisect_left

from twisted.internet import defer

from mdpy import errors
from mdpy.imap import sort as sorting
from mdpy.imap.messages import _SearchContext
from mdpy.imap.parser import ParseError, formatSequence
from mdpy.imap.search import esearchHead
from mdpy.imap.structure import quoteString

CAPABILITIES = (b"CONTEXT=SEARCH", b"CONTEXT=SORT")

# Hardening: the contexts one session may keep (RFC 5267 section 4.3.1:
# at least one).
MAX_CONTEXTS = 10


class Context:
    """
    One updating search or sort.

    @ivar tag: the tag of the command that made it (L{bytes}).
    @ivar uid: whether it was UID SEARCH or UID SORT: the updates name UIDs,
        else sequence numbers.
    @ivar criteria: its L{mdpy.imap.search.Criteria}.
    @ivar sortKeys: its sort keys (L{mdpy.imap.sort.sortMessages}), or
        L{None} for a search, whose result is in mailbox order.
    @ivar results: the UIDs of the result as the client knows it, in order.
    @ivar tested: the message objects the result was last found from, by
        UID; a message whose object is still the view's needs no new test.
    @ivar sortables: L{mdpy.imap.sort.Sortable} by UID, for a sort.
    """

    def __init__(self, tag, uid, criteria, sortKeys=None):
        self.tag = tag
        self.uid = uid
        self.criteria = criteria
        self.sortKeys = sortKeys
        self.volatile = criteria.rememberContent()
        self.results = []
        self.tested = {}
        self.sortables = {}

    def start(self, messages, results, fields=None):
        """
        Record the result the command sent.

        @param messages: the messages of the view the command tested.
        @param results: the UIDs it found, in result order.
        @param fields: L{mdpy.imap.sort.SortFields} by UID, for a sort.
        """
        self.tested = {message.uid: message for message in messages}
        self.results = list(results)
        if self.sortKeys is not None:
            for message in messages:
                if message.uid in fields:
                    self.sortables[message.uid] = self._sortable(message, fields[message.uid])

    @staticmethod
    def _sortable(message, fields):
        # Ties are broken by the UID, which is in mailbox order as the
        # sequence number is, and does not change.
        return sorting.Sortable(message.uid, message.uid, message, fields)

    def unread(self, messages, fieldsOf):
        """
        @param messages: the mailbox's messages, in UID order.
        @param fieldsOf: C{fieldsOf(message)}: its sort fields if known
            without reading it, else L{None}.
        @return: the messages this context must read before it can test
            them: those new to it when it looks at content, and for a sort
            those that changed and may now need sorting.
        """
        wanted = []
        tested = self.tested
        for message in reversed(messages):
            known = tested.get(message.uid)
            if self.sortKeys is None:
                if known is not None:
                    break  # older messages were tested, their content is known
                if not self.criteria.knows(message):
                    wanted.append(message)
            elif known is not message and (
                (known is None and not self.criteria.knows(message))
                or (message.uid not in self.sortables and fieldsOf(message) is None)
            ):
                wanted.append(message)
        return wanted

    def refresh(self, view, ctx, fieldsOf):
        """
        Test again what changed, and note the new result.

        @param view: the messages of the session's view, in order.
        @param ctx: what the criteria may ask (L{_UpdateContext}).
        @param fieldsOf: as for L{unread}.
        @return: C{(old, new)}: the result's UIDs before and now, in order.
        """
        members = set(self.results)
        found, tested = set(), {}
        for message in view:
            uid = message.uid
            if not self.volatile and self.tested.get(uid) is message:
                tested[uid] = message
                if uid in members:
                    found.add(uid)
                continue
            try:
                matched = self.criteria.match(message, ctx)
                if matched and self.sortKeys is not None and uid not in self.sortables:
                    fields = fieldsOf(message)
                    if fields is None:
                        raise errors.NotFound("message %s was not read" % (message.key,))
                    self.sortables[uid] = self._sortable(message, fields)
            except (errors.NotFound, OSError):
                # Not read yet (tested next time), or gone.
                if uid in self.tested:
                    tested[uid] = self.tested[uid]
                    if uid in members:
                        found.add(uid)
                continue
            tested[uid] = message
            if matched:
                found.add(uid)
        if len(tested) < len(self.tested):
            self.criteria.forget(message.key for message in tested.values())
            self.sortables = {uid: item for uid, item in self.sortables.items() if uid in tested}
        self.tested = tested
        old = self.results
        if self.sortKeys is None:
            self.results = sorted(found)
        else:
            ordered = sorting.sortMessages([self.sortables[uid] for uid in found], self.sortKeys)
            self.results = [item.number for item in ordered]
        return old, self.results


def _removals(results, doomed, number):
    """
    @return: C{(pairs, kept)}: the C{(context position, numbers)} pairs
        that take C{doomed} out of C{results} when done in order (RFC 5267
        section 4.3.4), and what is left of C{results}.
    """
    pairs, kept, run = [], [], None
    for uid in results:
        if uid in doomed:
            if run is None:
                run = (len(kept) + 1, [])
                pairs.append(run)
            run[1].append(number(uid))
        else:
            kept.append(uid)
            run = None
    return pairs, kept


def _additions(kept, results, number):
    """
    @return: the C{(context position, numbers)} pairs that make C{results}
        of C{kept} (whose order they keep) when done in order (RFC 5267
        section 4.3.3).
    """
    kept = set(kept)
    pairs, run = [], None
    for index, uid in enumerate(results):
        if uid in kept:
            run = None
            continue
        if run is None:
            run = (index + 1, [])
            pairs.append(run)
        run[1].append(number(uid))
    return pairs


def _line(context, items):
    """
    @param items: C{(name, [(position, numbers)])}, in order.
    @return: the C{* ESEARCH} update line, or C{b""} when nothing changed.
    """
    words = [esearchHead(context.tag, context.uid)]
    for name, pairs in items:
        for position, numbers in pairs:
            words.append(b"%s (%d %s)" % (name, position, formatSequence(numbers)))
    if len(words) == 1:
        return b""
    return b" ".join(words) + b"\r\n"


def contextChanges(context, old, new, expunged, numberBefore, numberNow):
    """
    The update responses for one context (RFC 5267 sections 4.3.2 to
    4.3.4): for a search, its messages in mailbox order at context position
    0; for a sort, the positions in sort order.

    @param old: the result's UIDs before, in order.
    @param new: the result's UIDs now, in order.
    @param expunged: the UIDs about to be reported expunged.
    @param numberBefore: C{numberBefore(uid)}: what the client calls a
        message before the expunges.
    @param numberNow: the same, after them.
    @return: C{(before, after)}: the line to send before the C{EXPUNGE}
        responses (what they take out of the result) and the line to send
        after the other updates (the rest), each possibly C{b""}.
    """
    now = set(new)
    gone = {uid for uid in old if uid not in now}
    if not gone and len(new) == len(old):
        return b"", b""
    if context.sortKeys is None:
        removedFirst = sorted(uid for uid in gone if uid in expunged)
        removedLater = sorted(uid for uid in gone if uid not in expunged)
        added = sorted(now.difference(old))
        first = [(0, [numberBefore(uid) for uid in removedFirst])] if removedFirst else []
        later = [(0, [numberNow(uid) for uid in removedLater])] if removedLater else []
        adding = [(0, [numberNow(uid) for uid in added])] if added else []
    else:
        first, kept = _removals(old, gone.intersection(expunged), numberBefore)
        later, kept = _removals(kept, gone, numberNow)
        adding = _additions(kept, new, numberNow)
    return (
        _line(context, [(b"REMOVEFROM", first)]),
        _line(context, [(b"REMOVEFROM", later), (b"ADDTO", adding)]),
    )


class _UpdateContext(_SearchContext):
    """
    What the criteria of a context may ask while its updates are found:
    the content of the messages read beforehand.
    """

    def __init__(self, selected, now, octets):
        _SearchContext.__init__(self, selected, now)
        self._octets = octets

    def content(self, message):
        data = self._octets.get(message.key)
        if data is None:
            raise errors.NotFound("message %s was not read" % (message.key,))
        return data


class Contexts:
    """
    The contexts of one session, for one selected mailbox.

    @ivar selected: the L{mdpy.imap.selected.SelectedMailbox} they are of.
    @ivar byTag: the L{Context}s by tag, oldest first.
    @ivar octets: the messages read for the next updates, by key.
    @ivar fields: the L{mdpy.imap.sort.SortFields} of those, by key.
    """

    def __init__(self, selected):
        self.selected = selected
        self.byTag = {}
        self.octets = {}
        self.fields = {}

    def fieldsOf(self, cache):
        """
        @param cache: the L{mdpy.imap.sort.SortFieldCache}.
        @return: C{fieldsOf(message)}: the sort fields of a message if they
            are known without reading it, else L{None}.
        """
        return lambda message: self.fields.get(message.key) or cache.cached(message)


class ContextCommands:
    """
    RETURN (UPDATE), its updates and CANCELUPDATE, for
    L{mdpy.imap.server.IMAP4Server}.
    """

    _contexts = None

    def _liveContexts(self):
        """
        @return: the L{Contexts} of the selected mailbox, or L{None} if it
            has none (those of a mailbox left are dropped).
        """
        contexts = self._contexts
        if contexts is None or contexts.selected is not self.selected or not contexts.byTag:
            return None
        return contexts

    def checkContextTag(self, tag, criteria):
        """
        Get ready for a command with C{RETURN (UPDATE)}: its criteria
        remember what they find in content from the start.

        @raise ParseError: a context of the tag exists (RFC 5267 section
            4.3: answered C{BAD}).
        """
        contexts = self._liveContexts()
        if contexts is not None and tag in contexts.byTag:
            raise ParseError("Tag reuse")
        criteria.rememberContent()

    def startContext(self, result, tag, uid, criteria, messages, sortKeys=None):
        """
        Keep the context of a command with C{RETURN (UPDATE)}, or say
        C{NO [NOUPDATE]} if the session has L{MAX_CONTEXTS} (RFC 5267
        section 4.3.1).  A callback in the command's chain.

        @param result: what the search found: C{(sequence, UID, modseq)} of
            each match, or for a sort the L{mdpy.imap.sort.Sortable}s.
        @param messages: the messages of the view the command tested.
        @return: C{result}.
        """
        if self.closing or self.selected is None:
            return result
        contexts = self._liveContexts()
        if contexts is None:
            contexts = self._contexts = Contexts(self.selected)
        if len(contexts.byTag) >= MAX_CONTEXTS or tag in contexts.byTag:
            self.send(b"* NO [NOUPDATE %s] Too many updating searches.\r\n" % (quoteString(tag),))
            return result
        context = Context(tag, uid, criteria, sortKeys)
        if sortKeys is None:
            context.start(messages, [match[1] for match in result])
        else:
            byNumber = {item.sequence: messages[item.sequence - 1].uid for item in result}
            ordered = sorting.sortMessages(result, sortKeys)
            context.start(
                messages,
                [byNumber[item.sequence] for item in ordered],
                {byNumber[item.sequence]: item.fields for item in result},
            )
        contexts.byTag[tag] = context
        return result

    def prepareContexts(self, _=None):
        """
        Read the messages new to a context that it must read to test them,
        before the updates are sent.

        @return: L{None} if there are none, else a Deferred fired once they
            are read.
        """
        contexts = self._liveContexts()
        if contexts is None or self.closing:
            return None
        messages = self.selected.mailbox.messages()
        fieldsOf = contexts.fieldsOf(self.factory.sortFields)
        wanted = {}
        for context in contexts.byTag.values():
            for message in context.unread(messages, fieldsOf):
                if message.key not in contexts.octets:
                    wanted[message.key] = message
        if not wanted:
            return None
        return defer.ensureDeferred(self._readForContexts(contexts, list(wanted.values())))

    async def _readForContexts(self, contexts, messages):
        cache = self.factory.sortFields
        for message in messages:
            try:
                data = await message.read()
            except (errors.NotFound, OSError):
                continue
            contexts.octets[message.key] = data
            contexts.fields[message.key] = cache.get(message, data)

    def withContextUpdates(self, before, lines):
        """
        Add the updates of the contexts to what the view owes the client.

        @param before: the UIDs of the view before the view's updates were
            found (L{mdpy.imap.selected.SelectedMailbox.updates}), or
            L{None} when there was no context then.
        @param lines: those updates, the expunges first.
        @return: the lines to send.
        """
        contexts = self._liveContexts()
        if contexts is None or before is None:
            return lines
        selected = self.selected
        now = selected.uids
        expunged = set(before).difference(now)
        ctx = _UpdateContext(selected, self.factory.clock.seconds(), contexts.octets)
        view = selected.messagesAt(range(selected.count))
        fieldsOf = contexts.fieldsOf(self.factory.sortFields)

        def numberBefore(uid):
            return bisect_left(before, uid) + 1

        def numberNow(uid):
            return bisect_left(now, uid) + 1

        first, later = [], []
        for context in contexts.byTag.values():
            old, new = context.refresh(view, ctx, fieldsOf)
            if context.uid:
                one, two = contextChanges(context, old, new, expunged, int, int)
            else:
                one, two = contextChanges(context, old, new, expunged, numberBefore, numberNow)
            first.append(one)
            later.append(two)
        contexts.octets.clear()
        contexts.fields.clear()
        return [line for line in [b"".join(first)] + list(lines) + [b"".join(later)] if line]

    def do_CANCELUPDATE(self, tag, args):
        """
        C{CANCELUPDATE "tag" ...} (RFC 5267 section 4.3.5): end these
        contexts; C{NO} names a tag that has none.
        """
        if not args or not all(isinstance(arg, bytes) for arg in args):
            raise ParseError("Expected quoted tags")
        contexts = self._liveContexts()
        for name in args:
            if contexts is None or name not in contexts.byTag:
                return self.no(tag, b"Unknown tag.")
            del contexts.byTag[name]
        return self.complete(tag, b"OK", b"Updates cancelled.")
