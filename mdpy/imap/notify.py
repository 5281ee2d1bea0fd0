# -*- test-case-name: tests.test_imap_notify -*-
"""
The NOTIFY extension (RFC 5465), a mixin of L{mdpy.imap.server.IMAP4Server}:
C{NOTIFY NONE} and C{NOTIFY SET [STATUS] (filter (events)) ...}, and the
unsolicited responses it asks for, outside IDLE too.

Changes are heard from the store's change feed (the session subscribes to
the whole account, which also tells of folders made, deleted or renamed,
and to each folder it watches, so that a feed hearing other processes
watches those folders): for the selected mailbox (filters C{SELECTED} and
C{SELECTED-DELAYED}) they are the usual EXISTS, EXPUNGE (not with
C{SELECTED-DELAYED}, section 5.2) and FETCH FLAGS, and a FETCH of
C{MessageNew}'s fetch attributes for each new message; for the other
mailboxes C{STATUS} (section 5.1), C{LIST} for C{MailboxName} (a mailbox
made or deleted, a renamed one reported as both) and C{SubscriptionChange}
(section 5.4).  C{AnnotationChange} and the metadata events are refused
with C{NO [BADEVENT]}.

Nothing is sent while a command runs: what is heard meanwhile is sent when
it ends (the selected mailbox's updates by the command itself).

Invariants: a session watches at most L{MAX_MAILBOXES} mailboxes (a NOTIFY
naming or matching more, or that needs the list of an account with more
mailboxes or subscriptions, is refused with C{NO [NOTIFICATIONOVERFLOW]}) and
holds at most that many changes and remembered STATUS replies; past that it
says C{OK [NOTIFICATIONOVERFLOW]} and stops notifying (section 5.8).
"""

from twisted.internet import defer

from mdpy import errors
from mdpy.imap import fetch as fetching
from mdpy.imap.mailboxes import SEPARATOR, Listing, decodeName, listLine
from mdpy.imap.parser import Atom, ParseError, isAtom

# The most mailboxes one session watches, and changes it holds.
MAX_MAILBOXES = 256

MESSAGE_EVENTS = ("MessageNew", "MessageExpunge", "FlagChange")
MAILBOX_EVENTS = ("MailboxName", "SubscriptionChange")
SUPPORTED = MESSAGE_EVENTS + MAILBOX_EVENTS
# Known to RFC 5465 and RFC 5464 but not supported: NO [BADEVENT].
UNSUPPORTED = ("AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange")
_EVENTS = {name.upper(): name for name in SUPPORTED + UNSUPPORTED}

# The STATUS items each message event asks for (RFC 5465 section 5.1).
_STATUS_ITEMS = {
    "MessageNew": ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"),
    "MessageExpunge": ("MESSAGES", "UNSEEN"),
    "FlagChange": ("UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"),
}
_FILTERS = ("SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES")


def _statusItemsOf(events):
    """
    @return: the STATUS items that tell of C{events} (RFC 5465 section 5.1).
    """
    items = []
    for event in MESSAGE_EVENTS:
        if event in events:
            items.extend(item for item in _STATUS_ITEMS[event] if item not in items)
    return items


class BadEvent(Exception):
    """
    An event this server does not support (C{NO [BADEVENT]}).
    """


class EventGroup:
    """
    One C{(filter (events))} of a NOTIFY SET for mailboxes other than the
    selected one.

    @ivar kind: the filter name, upper case.
    @ivar names: the mailboxes of C{SUBTREE} and C{MAILBOXES}.
    @ivar events: the event names.
    """

    def __init__(self, kind, names, events):
        self.kind = kind
        self.names = names
        self.events = events

    def matches(self, name, subscribed):
        """
        @param subscribed: the account's subscribed mailboxes.
        @return: whether the group covers mailbox C{name}.
        """
        if self.kind == "PERSONAL":
            return True
        if self.kind == "INBOXES":
            return name == "INBOX"
        if self.kind == "SUBSCRIBED":
            return name in subscribed
        if self.kind == "SUBTREE":
            return any(name == root or name.startswith(root + SEPARATOR) for root in self.names)
        return name in self.names


class Notification:
    """
    What one NOTIFY SET asks for.

    @ivar selected: the events of the selected mailbox, or L{None}.
    @ivar delayed: whether they are C{SELECTED-DELAYED}.
    @ivar fetch: the L{fetching.FetchRequest} of the fetch attributes sent
        for each new message of the selected mailbox, or L{None}.
    @ivar groups: the L{EventGroup}s of the other mailboxes, in order.

    And what a session keeps while it notifies:

    @ivar watches: C{{mailbox name: change feed subscription}}, name
        L{None} for the whole account.
    @ivar pending: the mailboxes heard of, not yet looked at, in order
        heard (a L{dict} of L{None}s).
    @ivar outbox: the responses that wait for the running command's end.
    @ivar status: C{{mailbox name: the STATUS response last sent}}.
    @ivar names: the account's mailboxes, as last looked at.
    @ivar subscribed: its subscriptions, as last looked at.
    """

    def __init__(self, selected, delayed, groups, fetch=None):
        self.selected = selected
        self.delayed = delayed
        self.groups = groups
        self.fetch = fetch
        self.watches = {}
        self.pending = {}
        self.outbox = []
        self.status = {}
        self.names = set()
        self.subscribed = set()

    def eventsOf(self, name, subscribed):
        """
        @return: the events of the first group covering mailbox C{name}
            (RFC 5465 section 6: the first match wins), or C{()}.
        """
        for group in self.groups:
            if group.matches(name, subscribed):
                return group.events
        return ()

    def wantsListing(self):
        """
        @return: whether it needs the account's folders and subscriptions.
        """
        return any(group.kind in ("PERSONAL", "SUBSCRIBED", "SUBTREE") or set(group.events) & set(MAILBOX_EVENTS)
                   for group in self.groups)


def _events(token, selected):
    """
    @param selected: whether they are the events of the selected mailbox.
    @return: C{(names, request)}: the event names of an C{events}
        argument, and the L{fetching.FetchRequest} of the C{MessageNew}
        fetch attributes (or L{None}).
    @raise BadEvent: an event known but not supported.
    """
    request = None
    if isAtom(token, "NONE"):
        return (), request
    if not isinstance(token, list) or not token:
        raise ParseError("Expected a list of events or NONE")
    events = []
    tokens = list(token)
    while tokens:
        item = tokens.pop(0)
        if not isinstance(item, Atom) or item.upper() not in _EVENTS:
            raise BadEvent("Unknown event")
        name = _EVENTS[item.upper()]
        if name in UNSUPPORTED:
            raise BadEvent(name)
        if name == "MessageNew" and tokens and isinstance(tokens[0], list):
            # RFC 5465 section 5.2: a fetch-att list, for SELECTED only.
            if not selected:
                raise ParseError("MessageNew takes fetch attributes only for the selected mailbox")
            request = fetching.parseFetchItems(tokens.pop(0))
            # Sent with the UID: the client may not know the message yet.
            if "UID" not in request.items:
                request.items.insert(0, "UID")
        if name in MAILBOX_EVENTS and selected:
            raise ParseError("%s is not an event of the selected mailbox" % (name,))
        if name not in events:
            events.append(name)
    return tuple(events), request


def parseNotify(args, utf8=False):
    """
    Parse the arguments of C{NOTIFY SET} after C{SET} (RFC 5465 section 8).

    @return: C{(status, notification)}: whether C{STATUS} was given, and the
        L{Notification}.
    @raise ParseError: bad syntax.
    @raise BadEvent: an event not supported.
    """
    args = list(args)
    status = bool(args) and isAtom(args[0], "STATUS")
    if status:
        args.pop(0)
    if not args:
        raise ParseError("Expected event groups")
    selected, delayed, groups, fetch = None, False, [], None
    kinds = set()
    for group in args:
        if not isinstance(group, list) or len(group) < 2 or not isinstance(group[0], Atom):
            raise ParseError("Expected (filter events)")
        kind = group[0].upper()
        if kind not in _FILTERS:
            raise ParseError("Unknown filter")
        if kind in kinds or (kind.startswith("SELECTED") and selected is not None):
            raise ParseError("Filter given twice")
        kinds.add(kind)
        if kind in ("SUBTREE", "MAILBOXES"):
            if len(group) != 3:
                raise ParseError("Expected (%s mailboxes events)" % (kind,))
            names = group[1] if isinstance(group[1], list) else [group[1]]
            if not names:
                raise ParseError("Expected mailboxes")
            decoded = []
            for name in names:
                try:
                    decoded.append(decodeName(name, utf8))
                except ParseError:
                    raise ParseError("Invalid mailbox name")
            groups.append(EventGroup(kind, decoded, _events(group[2], False)[0]))
            continue
        if len(group) != 2:
            raise ParseError("Expected (%s events)" % (kind,))
        if kind.startswith("SELECTED"):
            selected, fetch = _events(group[1], True)
            delayed = kind == "SELECTED-DELAYED"
        else:
            groups.append(EventGroup(kind, (), _events(group[1], False)[0]))
    return status, Notification(selected, delayed, groups, fetch)


class NotifyCommands:
    """
    The NOTIFY command of L{mdpy.imap.server.IMAP4Server} and the
    notifications it asks for.

    The session provides C{factory}, C{account}, C{selected}, C{utf8},
    C{closing}, C{log}, C{statusResponse}, C{writeFetchResponses}, C{send},
    C{complete}, C{no}, C{_storeCall}, C{_noFromFailure}, C{_pushUpdates},
    C{_listening} and C{_mailboxChanged}; it calls L{commandStarted} and
    L{commandEnded} around each command.
    """

    notification = None
    _commandRunning = False
    _notifyRunning = False
    _notifyOverflowed = False

    def do_NOTIFY(self, tag, args):
        if not args or not isinstance(args[0], Atom):
            raise ParseError("Expected SET or NONE")
        verb = args[0].upper()
        if verb == "NONE":
            if len(args) != 1:
                raise ParseError("NOTIFY NONE takes no arguments")
            self._stopNotify()
            return self.complete(tag, b"OK", b"NOTIFY completed.")
        if verb != "SET":
            raise ParseError("Expected SET or NONE")
        try:
            status, notification = parseNotify(args[1:], self.utf8)
        except BadEvent:
            return self.no(tag, b"Event not supported.",
                           b"BADEVENT (" + " ".join(SUPPORTED).encode("ascii") + b")")
        for group in notification.groups:
            if len(group.names) > MAX_MAILBOXES:
                return self.no(tag, b"Too many mailboxes to watch.", b"NOTIFICATIONOVERFLOW")
        d = defer.ensureDeferred(self._setNotify(notification, status))
        d.addCallbacks(self._cbNotifySet, self._noFromFailure, callbackArgs=(tag,), errbackArgs=(tag,))
        return d

    def _cbNotifySet(self, overflow, tag):
        if overflow:
            return self.no(tag, b"Too many mailboxes to watch.", b"NOTIFICATIONOVERFLOW")
        return self.complete(tag, b"OK", b"NOTIFY completed.")

    async def _setNotify(self, notification, status):
        """
        Replace the notifications asked for by C{notification}: subscribe to
        the mailboxes it covers, and send their C{STATUS} if C{status}.

        @return: whether it covers too many mailboxes (then nothing changed).
        """
        store = self.factory.store
        names, subscribed = set(), set()
        if notification.groups:
            names = set(await self._storeCall(store.listMailboxes))
            if notification.wantsListing():
                subscribed = set(await self._storeCall(store.listSubscriptions))
        covered = [name for name in sorted(names) if notification.eventsOf(name, subscribed)]
        listed = max(len(names), len(subscribed)) if notification.wantsListing() else 0
        if len(covered) > MAX_MAILBOXES or listed > MAX_MAILBOXES:
            return True
        if self.closing:
            return False
        self._stopNotify()
        self.notification = notification
        notification.names, notification.subscribed = names, subscribed
        feed = self.factory.changeFeed
        if feed is not None:
            # The selected mailbox is heard through its own subscription.
            if notification.groups:
                notification.watches[None] = feed.subscribe(self.account, None, self._mailboxChanged)
            for name in covered:
                self._watchFolder(notification, name)
        elif not self._listening:
            store.addListener(self.account, self._mailboxChanged)
            self._listening = True
        for name in covered:
            line = await self._statusChange(notification, name)
            if status and line is not None:
                self.send(line)
        return False

    def _stopNotify(self):
        """
        End the notifications (NOTIFY NONE, another NOTIFY SET, the end of
        the session).
        """
        notification, self.notification = self.notification, None
        if notification is not None:
            for watch in notification.watches.values():
                watch.unsubscribe()

    def _watchFolder(self, notification, name):
        """
        Subscribe to the changes of folder C{name} too, so that a change
        feed hearing other processes watches it (the account's subscription
        hears those of the folders someone watches).
        """
        feed = self.factory.changeFeed
        watches = notification.watches
        if feed is not None and name not in watches and len(watches) <= MAX_MAILBOXES:
            watches[name] = feed.subscribe(self.account, name, self._notifyHeard)

    def _rememberStatus(self, name, line):
        """
        @return: whether C{line} differs from the STATUS last sent for
            C{name}.
        """
        sent = self.notification.status
        if sent.get(name) == line:
            return False
        if name not in sent and len(sent) >= MAX_MAILBOXES:
            sent.pop(next(iter(sent)))
        sent[name] = line
        return True

    # --- what is heard --------------------------------------------------------

    def notifiesSelected(self):
        """
        @return: whether the client asked for unsolicited responses of the
            selected mailbox.
        """
        return self.notification is not None and bool(self.notification.selected)

    def newMessagesFetched(self, selected, uids):
        """
        The view C{selected} took in the messages C{uids}: send the fetch
        attributes of C{MessageNew}, if any were asked for (RFC 5465
        section 5.2), as a C{FETCH} that does not set C{\\Seen}.
        """
        notification = self.notification
        if notification is None or notification.fetch is None or not notification.selected or not uids:
            return
        messages = [selected.messages[uid] for uid in uids]
        d = defer.ensureDeferred(self.writeFetchResponses(selected, messages, notification.fetch, {}, []))
        d.addErrback(lambda failure: self.log.failure(
            "imap: cannot fetch new messages for {user}", failure, user=self.account))

    def _notifyHeard(self, account, folder):
        """
        A folder other than the selected one changed, or (folder L{None})
        the account's folders or subscriptions: check it once no command
        runs.
        """
        notification = self.notification
        if notification is None or self.selected is not None and folder == self.selected.mailbox.name:
            return
        if folder not in notification.pending and len(notification.pending) >= MAX_MAILBOXES:
            self._overflow()
            return
        notification.pending[folder] = None
        self.flushNotifications()

    def _overflow(self):
        """
        More changes than a session holds: stop notifying, and say so (RFC
        5465 section 5.8) once no command runs.
        """
        self._stopNotify()
        self._notifyOverflowed = True
        self._sayOverflow()

    def _sayOverflow(self):
        if self._notifyOverflowed and not self._commandRunning and not self.closing:
            self._notifyOverflowed = False
            self.send(b"* OK [NOTIFICATIONOVERFLOW] Too many changes; notifications stopped.\r\n")

    def commandStarted(self):
        """
        A command starts: what is heard now waits for its end.
        """
        self._commandRunning = True

    def commandEnded(self):
        """
        A command ended: send what was heard while it ran.
        """
        self._commandRunning = False
        self._sayOverflow()
        if self.notification is None or self.closing:
            return
        if self.notification.outbox:
            lines, self.notification.outbox = self.notification.outbox, []
            self.send(b"".join(lines))
        self.flushNotifications()

    def flushNotifications(self):
        """
        Send what is owed now if no command runs: the selected mailbox's
        updates, and the checks of the other mailboxes heard of.
        """
        if self._commandRunning or self.closing or self.notification is None:
            return
        selected = self.selected
        if selected is not None and selected.dirty and self.notifiesSelected():
            self._pushUpdates()
        if self.notification.pending and not self._notifyRunning:
            self._notifyRunning = True
            d = defer.ensureDeferred(self._checkPending())
            d.addErrback(self._ebChecked)
            d.addBoth(self._cbChecked)

    def _ebChecked(self, failure):
        """
        The mailboxes could not be looked at: the account is gone (the
        next command ends the session), or the store failed (logged).
        """
        if failure.check(errors.NotFound):
            return None
        self.log.failure("imap: notification for {user} failed", failure, user=self.account)
        return None

    def _cbChecked(self, _):
        self._notifyRunning = False
        if self.notification is not None and self.notification.pending:
            self.flushNotifications()

    def _sendNotification(self, lines):
        if not lines or self.closing or self.notification is None:
            return
        if self._commandRunning:
            if len(self.notification.outbox) + len(lines) > MAX_MAILBOXES:
                self._overflow()
                return
            self.notification.outbox.extend(lines)
        else:
            self.send(b"".join(lines))

    async def _checkPending(self):
        """
        Check the mailboxes heard of, one at a time, and send what changed.
        """
        while self.notification is not None and self.notification.pending:
            notification = self.notification
            folder = next(iter(notification.pending))
            del notification.pending[folder]
            lines, made = [], ()
            if notification.wantsListing():
                made = await self._listingChanges(notification, lines)
            # A mailbox just made is told of by LIST, and by STATUS only if
            # messages are in it already (delivered before it was seen, or
            # renamed with it): its STATUS now is what later ones are
            # compared with.
            for name in sorted(made):
                line = await self._statusChange(notification, name, made=True)
                if line is not None:
                    lines.append(line)
            if folder is not None and folder not in made:  # None: which one is unknown
                line = await self._statusChange(notification, folder)
                if line is not None:
                    lines.append(line)
            if self.notification is not notification:
                return
            self._sendNotification(lines)

    async def _statusChange(self, notification, name, made=False):
        """
        @param made: whether C{name} was just made: then an empty mailbox's
            response is only remembered.
        @return: the C{STATUS} response of mailbox C{name} for the message
            events covering it, if it differs from the one last sent (it
            is remembered), else L{None}; never for the selected mailbox
            (RFC 5465 section 5.1).
        """
        events = notification.eventsOf(name, notification.subscribed)
        if not set(events) & set(MESSAGE_EVENTS) or self.selected is not None and name == self.selected.mailbox.name:
            return None
        try:
            mailbox = await self._storeCall(self.factory.store.openMailbox, name)
        except errors.NotFound:
            return None
        if self.notification is not notification:
            return None
        line = self.statusResponse(mailbox, _statusItemsOf(events), name)
        changed = self._rememberStatus(name, line)
        return line if changed and not (made and not mailbox.messages()) else None

    async def _listingChanges(self, notification, lines):
        """
        Add to C{lines} the C{LIST} responses for the mailboxes made or
        deleted and the subscriptions changed since last looked at (RFC
        5465 section 5.4), for the groups asking for them; watch the
        mailboxes made that the notification covers, no longer those
        deleted.

        @return: the names of the mailboxes made.
        """
        store = self.factory.store
        names = set(await self._storeCall(store.listMailboxes))
        subscribed = set(await self._storeCall(store.listSubscriptions))
        if self.notification is not notification:
            return set()
        if len(names) > MAX_MAILBOXES or len(subscribed) > MAX_MAILBOXES:
            self._overflow()
            return set()
        before, beforeSubscribed = notification.names, notification.subscribed
        notification.names, notification.subscribed = names, subscribed
        listing = Listing(names, subscribed)
        made = names - before
        for name in made:
            if notification.eventsOf(name, subscribed):
                self._watchFolder(notification, name)
        for name in before - names:
            watch = notification.watches.pop(name, None)
            if watch is not None:
                watch.unsubscribe()
        for name in sorted(names ^ before):
            if "MailboxName" in notification.eventsOf(name, subscribed | beforeSubscribed):
                lines.append(self._listResponse(listing, name))
                notification.status.pop(name, None)
        for name in sorted((subscribed ^ beforeSubscribed) - (names ^ before)):
            if "SubscriptionChange" in notification.eventsOf(name, subscribed | beforeSubscribed):
                lines.append(self._listResponse(listing, name))
        return made

    def _listResponse(self, listing, name):
        """
        @return: the C{LIST} response telling of C{name} now: a mailbox
            gone is C{\\NonExistent} (RFC 5465 section 5.4).
        """
        if name in listing.existing:
            attributes = listing.attributes(name, subscribedFlag=True)
        else:
            attributes = ["\\NonExistent"] + (["\\Subscribed"] if name in listing.subscribed else [])
        return listLine(b"LIST", attributes, name, utf8=self.utf8)
