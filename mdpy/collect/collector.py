# -*- test-case-name: tests.test_domainpop_service -*-
"""
Collection from a POP3 mailbox for DomainPOP and MultiPOP: download a
remote mailbox and hand each message to the delivery pipeline, as SMTP
would.

This module is past ~800 lines on purpose: one cycle and the never-lose
invariants below are kept together, in one class, so that they can be read
and checked at once.

A DomainPOP source is a domain's catch-all mailbox at an ISP: the SMTP
envelope is gone, so the local recipients of each message are found in its
headers (L{mdpy.domainpop.recipients}).  A MultiPOP source is one user's own
remote mailbox: everything goes to that user's INBOX.

One cycle (L{Collector.collect}):
 1. connect (TLS as configured, certificate verified), log in, LIST + UIDL;
 2. for each message: skip it if its UIDL was delivered before (deleting it
    at the server when it is due), else RETR it to a spool file, keep the raw
    bytes in C{archive_dir}, record the UIDL as I{pending}, find the
    recipients, drop those that had this message already (the dedupe cache),
    deliver, and record the UIDL as I{delivered} with its dedupe entries in
    one transaction; then DELE it unless it is to stay on the server;
 3. QUIT, which makes the deletions happen (RFC 1939 section 6).

Each downloaded message gets one log line saying where it went: its
Message-ID and UIDL, the mailbox it came from, and the local recipients
with the id of the delivery (as the pipeline's C{deliver:} lines show it),
or why it was dropped, bounced, given to the postmaster or held.

What no recipient can take is kept, never dropped unless the configuration
says so (C{unknown_recipient = drop}, logged): a message for unknown local
addresses goes to the postmaster, or bounces to its Return-Path with the
postmaster as the fallback; a loop, a message neither can take and one
that fails permanently for its recipients are I{held} (L{Collector._hold}):
kept in the source's held folder, with when and why in its state file, for
the administrator (C{mdpy domainpop held NAME}, L{heldMessages}), and
logged at warn.  A message for accounts over their quotas (L{mdpy.quota})
is held too, and the postmaster told; its other recipients get it.

A message larger than C{max_size} follows C{size_action}: C{skip} leaves it
at the server; C{delete} deletes it there without download and tells the
postmaster (or, when there is none, the log at warn); C{postmaster}
downloads it for the postmaster alone, held when the postmaster cannot take
it.  One larger than C{[smtp] max_message_size} cannot be downloaded and is
left at the server, logged at warn.  So no single message stops every
cycle; only a temporary failure stops one, to be tried again.

Invariants (never lose, never duplicate):
 - A message is deleted at the server only after every local copy was
   committed and its UIDL recorded as delivered: a crash at any point leaves
   it on the server, and the next cycle downloads it again (or, once
   delivered, only deletes it).
 - A message recorded as I{pending} may have been delivered before the crash:
   it is delivered again with L{Envelope.again}, and its keyed copies
   (L{mdpy.interfaces.IMailStore.deliver}) already stored are not stored
   twice.  (A copy forwarded to another domain may be queued twice then.)
 - Cycles of one source never overlap: the server and C{mdpy domainpop run}
   take the same lock file.
 - Any failure of the POP3 session stops the cycle without QUIT, so no
   deletion is committed.
"""

import fcntl
import hashlib
import os
import tempfile
import time

from twisted.internet import defer
from twisted.logger import LogLevel

from mdpy import errors
from mdpy.address import splitAddress
from mdpy.collect.held import HELD_FOLDER, returnPath
from mdpy.collect.periodic import CycleBusy, PeriodicCollection
from mdpy.domainpop.recipients import MAX_HEAD, RoutingRules, discover, parseHead
from mdpy.domainpop.state import DEDUPE_FINGERPRINT, dedupeKey, fingerprint
from mdpy.delivery import dsn
from mdpy.durable import writeFileAtomically
from mdpy.envelope import Envelope
from mdpy.logs import Logger
from mdpy.mail.addresslist import printable
from mdpy.mail.received import receivedField
from mdpy.pop3.client import FetchError, connect

log = Logger()

_CHUNK = 65536
# Refusals of a recipient whose account is full (mdpy.quota).
_OVER_QUOTA = (errors.QuotaExceeded, errors.LargerThanQuota)
_SLACK = 65536  # octets a message may exceed its LIST size by
BATCH = 50  # messages downloaded before they are delivered together
BATCH_OCTETS = 32 * 1024 * 1024


class _Downloaded:
    """
    A message downloaded to a spool file, waiting for its batch.

    @ivar again: it was (or may have been) delivered before a crash.
    @ivar copy: the same bytes came earlier in the batch (no UIDL).
    @ivar key: its dedupe key, or L{None}.
    @ivar oversize: it is larger than C{max_size} and goes to the
        postmaster (C{size_action = postmaster}).
    @ivar outcomes: what became of it, for its log line (L{Collector._route}).
    @ivar held: it was held (L{Collector._hold}).
    """

    def __init__(self, message, uid, firstSeen, again, spool, head, size):
        self.message = message
        self.uid = uid
        self.firstSeen = firstSeen
        self.again = again
        self.spool = spool
        self.head = head
        self.size = size
        self.copy = False
        self.key = None
        self.oversize = False
        self.outcomes = []
        self.held = False


class CollectorSettings:
    """
    What a source does with what it downloads; the defaults are those of
    C{[domainpop:NAME]}.

    @ivar recipient: L{None} for DomainPOP (route by headers), or the local
        address every message goes to (MultiPOP).
    @ivar dedupeHeader: the header whose value (per recipient) suppresses
        duplicates, L{DEDUPE_FINGERPRINT}, or L{None}.
    @ivar fingerprintFallback: mail without C{dedupeHeader} is deduplicated
        by its content fingerprint.
    @ivar maxMessageSize: the hard limit of one download, whatever LIST says.
    """

    def __init__(
        self,
        recipient=None,
        rules=None,
        leaveOnServerDays=0,
        maxSize=0,
        sizeAction="skip",
        archiveDir=None,
        dedupeHeader="Message-ID",
        fingerprintFallback=True,
        dedupeTTL=7 * 86400,
        unknownRecipient="postmaster",
        foreignRecipients="ignore",
        maxMessageSize=50 * 1024 * 1024,
    ):
        self.recipient = recipient
        self.rules = rules or RoutingRules()
        self.leaveOnServerDays = leaveOnServerDays
        self.maxSize = maxSize
        self.sizeAction = sizeAction
        self.archiveDir = archiveDir
        self.dedupeHeader = dedupeHeader
        self.fingerprintFallback = fingerprintFallback
        self.dedupeTTL = dedupeTTL
        self.unknownRecipient = unknownRecipient
        self.foreignRecipients = foreignRecipients
        self.maxMessageSize = maxMessageSize


class CycleReport:
    """
    What one cycle did.

    @ivar lines: one line per message handled, for C{mdpy domainpop run}.
    @ivar error: why the cycle stopped early, or L{None}.
    """

    def __init__(self, name):
        self.name = name
        self.listed = 0
        self.downloaded = 0
        self.copies = 0
        self.duplicates = 0
        self.held = 0
        self.dropped = 0
        self.bounced = 0
        self.skipped = 0
        self.deleted = 0
        self.lines = []
        self.error = None

    def summary(self):
        text = (
            "%s: %d on the server, %d downloaded, %d copies delivered, %d duplicates dropped, "
            "%d held, %d dropped, %d bounced, %d left (too big), %d deleted at the server"
            % (self.name, self.listed, self.downloaded, self.copies, self.duplicates,
               self.held, self.dropped, self.bounced, self.skipped, self.deleted)
        )
        if self.error is not None:
            text += "; stopped: %s" % (self.error,)
        return text


class _Lock:
    def __init__(self, path):
        self.path = path
        self._fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CycleBusy("a collection is under way in another process")
        self._fd = fd

    def release(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Collector:
    """
    One DomainPOP or MultiPOP source.

    @ivar name: C{domainpop/NAME} or C{multipop/USER/ID}, in logs and keys.
    @ivar account: the L{mdpy.pop3.client.POP3Account} to collect.
    @ivar pipeline: the L{mdpy.interfaces.IDeliveryTarget} mail goes to.
    @ivar directory: the directory (C{hasDomain}) deciding what is local.
    @ivar stateDir: where the lock, the spool and held messages live.
    """

    def __init__(self, name, account, settings, pipeline, directory, stateDir, hostname,
                 postmaster, reactor=None, runInThread=None, clock=time.time, openState=None):
        """
        @param openState: returns the source's state, kept by the backend
            (L{mdpy.interfaces.ICollectorStates.stateOf}): its UIDLs, held
            messages and dedupe cache.  Called once, through C{runInThread},
            which runs the state's methods too.
        """
        if openState is None:
            raise TypeError("a collector needs openState, the backend's state of its source")
        if reactor is None:
            from twisted.internet import reactor
        self.name = name
        self.account = account
        self.settings = settings
        self.pipeline = pipeline
        self.directory = directory
        self.stateDir = stateDir
        self.hostname = hostname
        self.postmaster = postmaster
        self.reactor = reactor
        self._runInThread = runInThread or defer.maybeDeferred
        self._clock = clock
        os.makedirs(self.heldDir, mode=0o700, exist_ok=True)
        self._lock = _Lock(os.path.join(stateDir, "lock"))
        self._openSourceState = openState
        self._state = None
        self.running = False
        self.batchSize = BATCH

    @property
    def heldDir(self):
        return os.path.join(self.stateDir, HELD_FOLDER)

    def _openState(self):
        if self._state is None:
            self._state = self._openSourceState()
        return self._state

    def close(self):
        """
        Forget the state: the backend that keeps it closes it.
        """
        self._state = None

    # --- one cycle -----------------------------------------------------------

    def collect(self):
        """
        Run one cycle.

        @return: a L{Deferred} firing with a L{CycleReport} (with C{error} set
            when the cycle stopped early), or failing with L{CycleBusy}.
        """
        if self.running:
            return defer.fail(CycleBusy("a collection is under way"))
        try:
            self._lock.acquire()
        except CycleBusy:
            return defer.fail()
        self.running = True
        report = CycleReport(self.name)
        d = defer.ensureDeferred(self._cycle(report))
        d.addErrback(self._ebCycle, report)

        def finish(result):
            self.running = False
            self._lock.release()
            log.info("{summary}", summary=report.summary())
            return result

        d.addBoth(finish)
        return d

    def _ebCycle(self, failure, report):
        if failure.check(FetchError, errors.MailError):
            report.error = getattr(failure.value, "detail", None) or str(failure.value)
        else:
            log.failure("{name}: collection failed", failure, name=self.name)
            report.error = "internal error: %s" % (failure.getErrorMessage(),)
        return report

    async def _cycle(self, report):
        state = await self._inThread(self._openState)
        await self._inThread(state.expire, self.settings.dedupeTTL)
        session = await connect(self.account, self.reactor)
        batch = []
        try:
            listing = await session.listing()
            report.listed = len(listing)
            self.checkpoint("listed")
            if listing and all(m.uid is not None for m in listing):
                await self._inThread(state.forget, {m.uid for m in listing})
            for message in listing:
                item = await self._download(session, state, message, batch, report)
                if item is not None:
                    batch.append(item)
                if len(batch) >= self.batchSize or sum(i.size for i in batch) >= BATCH_OCTETS:
                    await self._flush(session, state, batch, report)
                    batch = []
            if batch:
                await self._flush(session, state, batch, report)
                batch = []
            self.checkpoint("quit")
            await session.quit()
        except FetchError:
            session.abort()
            if batch:
                # What was downloaded before the session broke is delivered
                # now (and deleted at the server by the next cycle).
                await self._flush(None, state, batch, report)
                batch = []
            raise
        except BaseException:
            session.abort()
            raise
        finally:
            for item in batch:
                item.spool.close()
        return report

    async def _download(self, session, state, message, batch, report):
        """
        Download C{message} unless it was delivered before (then only
        delete it when due) or is too big.

        @return: a L{_Downloaded}, or L{None} when there is nothing to
            deliver.
        """
        settings = self.settings
        known = state.get(message.uid) if message.uid else None
        if known is not None and known[0] == "delivered":
            await self._maybeDelete(session, message, known[1], report)
            return None
        oversize = bool(settings.maxSize) and message.size > settings.maxSize
        if oversize and settings.sizeAction != "postmaster":
            await self._tooBig(session, message, report)
            return None
        if message.size > settings.maxMessageSize:
            self._cannotDownload(message, report)
            return None
        limit = min(settings.maxMessageSize, 2 * message.size + _SLACK)
        spool = tempfile.TemporaryFile(dir=self.stateDir)
        try:
            size = await session.retrieve(message.number, spool, maxSize=limit)
            report.downloaded += 1
            self.checkpoint("retrieved")
            uid, copy = message.uid, False
            if uid is None:
                uid = "sha256:" + await self._inThread(_digest, spool)
                # The same bytes twice in one batch: the first copy stands.
                copy = any(item.uid == uid for item in batch)
                known = None if copy else state.get(uid)
                if known is not None and known[0] == "delivered":
                    spool.close()
                    await self._maybeDelete(session, message, known[1], report)
                    return None
            firstSeen = known[1] if known is not None else self._clock()
            spool.seek(0)
            head = parseHead(spool.read(MAX_HEAD))
            if settings.archiveDir:
                await self._inThread(self._archive, spool, uid, firstSeen)
            item = _Downloaded(message, uid, firstSeen, known is not None, spool, head, size)
            item.copy = copy
            item.oversize = oversize
            if not copy and settings.dedupeHeader and settings.recipient is None:
                if settings.dedupeHeader != DEDUPE_FINGERPRINT:
                    item.key = dedupeKey(head, settings.dedupeHeader)
                if item.key is None and (settings.fingerprintFallback or settings.dedupeHeader == DEDUPE_FINGERPRINT):
                    item.key = await self._inThread(_fingerprint, head, spool)
            return item
        except BaseException:
            spool.close()
            raise

    async def _flush(self, session, state, batch, report):
        """
        Deliver a batch of downloaded messages: record them as pending,
        deliver them all at once (their copies are committed together),
        record them as delivered, then delete them at the server when due.
        """
        await self._inThread(state.markPendingMany, [(i.uid, i.firstSeen) for i in batch if not i.copy])
        self.checkpoint("pending")
        seen = set()  # (key, recipient) delivered by this batch
        try:
            results = await defer.gatherResults(
                [defer.ensureDeferred(self._route(item, state, seen, report)) for item in batch],
                consumeErrors=True,
            )
        except defer.FirstError as e:
            e.subFailure.raiseException()
        self.checkpoint("delivered")
        await self._inThread(
            state.markDeliveredMany, [(i.uid, pairs) for i, pairs in zip(batch, results) if not i.copy]
        )
        self.checkpoint("recorded")
        for item in batch:
            item.spool.close()
        if session is None:
            return
        for item in batch:
            await self._maybeDelete(session, item.message, item.firstSeen, report)

    async def _tooBig(self, session, message, report):
        """
        Apply C{size_action} to C{message}, larger than C{max_size}, without
        downloading it: C{skip} leaves it at the server; C{delete} deletes
        it there and tells the postmaster.  When the notice fails
        permanently (no postmaster account), the deletion goes ahead, as
        configured, and the log says so at warn instead: the mailbox at the
        server must not fill up with mail that will never be collected, and
        the next messages must not wait behind it.

        @raise errors.TemporaryFailure: the notice failed for now; the cycle
            stops before QUIT, so the message stays at the server until the
            notice can be sent.
        """
        what = "#%d %s: %d octets, larger than max_size" % (message.number, message.uid or "", message.size)
        if self.settings.sizeAction == "skip":
            report.skipped += 1
            report.lines.append("%s: left on the server" % (what,))
            return
        await session.delete(message.number)
        report.deleted += 1
        try:
            await self._notice(
                "Subject: DomainPOP %s deleted a message larger than max_size\r\n\r\n"
                "Message #%d (UIDL %s, %d octets) was deleted at %s without download.\r\n"
                % (self.name, message.number, message.uid, message.size, self.account.host)
            )
        except errors.PermanentFailure as e:
            level, told = LogLevel.warn, "the postmaster %s cannot be told: %s" % (self.postmaster, e.detail)
        else:
            level, told = LogLevel.info, "the postmaster %s was told" % (self.postmaster,)
        report.lines.append("%s: deleted at the server; %s" % (what, told))
        log.emit(level, "{name}: deleted message #{number} (UIDL {uid}, {size} octets) at {host} without"
                 " download, larger than max_size {limit} (size_action = delete); {told}",
                 name=self.name, number=message.number, uid=printable(message.uid or "none"),
                 size=message.size, host=self.account.host, limit=self.settings.maxSize, told=told)

    def _cannotDownload(self, message, report):
        """
        Leave C{message} at the server: it is larger than the largest
        message mdpy takes (C{[smtp] max_message_size}), so downloading it
        would be abandoned each time and stop every cycle there.  Logged at
        warn at each cycle, while it is there.
        """
        report.skipped += 1
        report.lines.append("#%d %s: %d octets, larger than max_message_size: left on the server"
                            % (message.number, message.uid or "", message.size))
        log.warn("{name}: left message #{number} (UIDL {uid}, {size} octets) at {host}: larger than"
                 " [smtp] max_message_size {limit}, it cannot be collected",
                 name=self.name, number=message.number, uid=printable(message.uid or "none"),
                 size=message.size, host=self.account.host, limit=self.settings.maxMessageSize)

    async def _maybeDelete(self, session, message, firstSeen, report):
        days = self.settings.leaveOnServerDays
        if days and self._clock() - firstSeen < days * 86400:
            return
        await session.delete(message.number)
        report.deleted += 1
        self.checkpoint("deleted")

    def checkpoint(self, step):
        """
        Called after each step of a cycle (C{listed}, C{retrieved},
        C{pending}, C{delivered}, C{recorded}, C{deleted}, C{quit}); tests
        override it to stop the cycle there, as a crash would.
        """

    # --- routing -------------------------------------------------------------

    async def _route(self, item, state, seen, report):
        """
        Deliver one downloaded message (L{_routeItem}) and log where it
        went, in one line: at info, or at warn when it was held.

        @return: the C{(dedupeKey, recipient)} pairs to record.
        """
        pairs = await self._routeItem(item, state, seen, report)
        log.emit(
            LogLevel.warn if item.held else LogLevel.info,
            "{name}: {item} from {username} at {host}: {outcomes}",
            name=self.name,
            item=_describe(item),
            username=printable(self.account.username),
            host=self.account.host,
            outcomes="; ".join(item.outcomes),
        )
        return pairs

    def _record(self, item, report, label, line, logged=None):
        """
        Say what became of C{item}: C{line} in the report (after its
        C{label}), C{logged} (or C{line}) in its log line.
        """
        report.lines.append("%s: %s" % (label, line))
        item.outcomes.append(logged or line)

    async def _routeItem(self, item, state, seen, report):
        """
        The work of L{_route}.  Everything up to the first C{await} runs in
        batch order, so that a copy later in the batch sees the recipients
        an earlier one took (C{seen}).
        """
        settings = self.settings
        key = item.key
        label = "#%d %s" % (item.message.number, item.uid)
        if item.copy:
            report.duplicates += 1
            self._record(item, report, label, "the same message twice at the server: dropped")
            return []
        if item.oversize:
            return await self._oversize(item, state, seen, label, report)
        if settings.recipient is not None:
            addresses, foreign = [settings.recipient], []
        else:
            found = discover(item.head, settings.rules)
            if found.loop:
                await self._hold(item, state, label, report, "a loop: %d Received headers, more than max_hops %d"
                                % (found.hops, settings.rules.maxHops))
                return []
            addresses, foreign = [], []
            for address in found.addresses:
                local = self.directory.hasDomain(splitAddress(address)[1])
                (addresses if local else foreign).append(address)
            if settings.foreignRecipients == "forward":
                addresses += foreign
                foreign = []
        if foreign:
            self._record(item, report, label, "foreign %s: ignored" % (", ".join(foreign),))
        fresh, duplicates = await self._dedupe(item, addresses, state, seen, label, report)
        if not fresh and duplicates:
            return []
        overQuota = {}
        try:
            delivered, refused, messageId = await self._deliver(item, fresh, overQuota=overQuota)
        except _OVER_QUOTA as e:
            # It fits the quota of none of the accounts that took it at
            # first (see mdpy.quota).
            await self._holdOverQuota(item, state, label, report, dict.fromkeys(fresh, e.detail))
            return []
        except errors.PermanentFailure as e:
            await self._hold(item, state, label, report, "delivery to %s failed: %s" % (", ".join(fresh), e.detail))
            return []
        if delivered:
            report.copies += len(delivered)
            self._record(item, report, label, "delivered to %s" % (", ".join(delivered),),
                         "delivered to %s as %s" % (_addresses(delivered), messageId))
        if overQuota:
            await self._holdOverQuota(item, state, label, report, overQuota)
        if refused or not (delivered or overQuota):
            await self._unknown(item, state, list(refused), label, report)
        return [(key, address) for address in delivered] if key is not None else []

    async def _holdOverQuota(self, item, state, label, report, overQuota):
        """
        Hold C{item} (L{_hold}) for the recipients in C{overQuota} (an
        address: why), whose accounts are over their quotas, and tell the
        postmaster, so that it is not lost while they are full and is not
        left at the server either.  A notice that cannot be sent is
        logged instead.
        """
        why = "over quota: " + "; ".join(overQuota.values())
        await self._hold(item, state, label, report, why)
        try:
            await self._notice(
                "Subject: %s held a message for a mailbox over its quota\r\n\r\n"
                "Message #%d (UIDL %s) from %s for %s was held: %s.\r\n"
                "It is kept in %s until the administrator delivers it.\r\n"
                % (self.name, item.message.number, item.uid, self.account.host,
                   ", ".join(overQuota), why, self.heldDir))
        except errors.MailError as e:
            log.warn("{name}: the postmaster {postmaster} cannot be told of a message held over quota: {why}",
                     name=self.name, postmaster=self.postmaster, why=e.detail)

    async def _deliver(self, item, addresses, suffix="", overQuota=None):
        """
        Hand the downloaded C{item} to the pipeline for C{addresses}.

        @param overQuota: a L{dict} given the addresses refused because
            their accounts are full (L{mdpy.quota}), with why; L{None}: such
            a refusal fails the delivery as a whole.

        @return: C{(accepted, refused, messageId)}: the addresses that took
            it, a L{dict} of those that do not exist or take no mail to why,
            and the id of the delivery (as the pipeline logs it).
        @raise errors.MailError: the delivery failed as a whole.
        """
        if not addresses:
            return [], {}, None
        envelope = Envelope(
            returnPath(item.head),
            helo=self.account.host,
            protocol="POP3",
            receivedAt=item.firstSeen,
            trusted=self.settings.foreignRecipients == "forward",
            deliveryKey="%s/%s%s" % (self.name, item.uid, suffix),
            again=item.again,
        )
        delivery = await defer.maybeDeferred(self.pipeline.startDelivery, envelope)
        accepted, refused = [], {}
        try:
            for address in addresses:
                try:
                    await defer.maybeDeferred(delivery.addRecipient, address)
                except (errors.NotFound, errors.Disabled, errors.RelayDenied) as e:
                    refused[address] = e.detail
                except _OVER_QUOTA as e:
                    if overQuota is None:
                        raise
                    overQuota[address] = e.detail
                else:
                    accepted.append(address)
            if not accepted:
                delivery.abort()
                return accepted, refused, None
            delivery.write(self._received(envelope, accepted))
            spool = item.spool
            spool.seek(0)
            for chunk in iter(lambda: spool.read(_CHUNK), b""):
                delivery.write(chunk)
        except BaseException:
            delivery.abort()
            raise
        await defer.maybeDeferred(delivery.commit)
        return accepted, refused, envelope.messageId

    async def _unknown(self, item, state, unknown, label, report):
        """
        Apply C{unknown_recipient} to a message with C{unknown} local
        recipients, or with none found: C{drop} drops it, saying so in the
        log; C{bounce} sends a DSN (RFC 3464) to its Return-Path, or when
        there is none or the DSN cannot be sent, goes on as C{postmaster};
        C{postmaster} delivers it to the postmaster.  When the postmaster
        cannot take it either, it is held (L{_hold}), never dropped.

        @raise errors.TemporaryFailure: the postmaster's delivery failed for
            now; the message stays at the server for the next cycle.
        """
        why = "unknown " + ", ".join(unknown) if unknown else "no recipient found"
        policy = self.settings.unknownRecipient
        if policy == "drop":
            report.dropped += 1
            self._record(item, report, label, "%s: dropped" % (why,),
                         "dropped: %s (unknown_recipient = drop)" % (why,))
            return
        if policy == "bounce":
            sender = returnPath(item.head)
            if not sender:
                why += "; no Return-Path to bounce to"
            else:
                try:
                    await self._bounce(item, sender, unknown)
                except errors.MailError as e:
                    why += "; no bounce to %s: %s" % (sender, e.detail)
                else:
                    report.bounced += 1
                    self._record(item, report, label, "%s: bounced to %s" % (why, sender),
                                 "bounced to <%s>: %s (unknown_recipient = bounce)" % (sender, why))
                    return
        await self._toPostmaster(item, state, label, report, why)

    async def _oversize(self, item, state, seen, label, report):
        """
        Deliver C{item}, larger than C{max_size}, to the postmaster instead
        of its recipients (C{size_action = postmaster}); a second copy of it
        (the same dedupe key) is dropped as a duplicate.

        @return: the C{(dedupeKey, postmaster)} pair to record, if any.
        """
        fresh, duplicates = await self._dedupe(item, [self.postmaster], state, seen, label, report)
        if duplicates:
            return []
        why = "%d octets, larger than max_size %d" % (item.message.size, self.settings.maxSize)
        if await self._toPostmaster(item, state, label, report, why) and item.key is not None:
            return [(item.key, self.postmaster)]
        return []

    async def _dedupe(self, item, addresses, state, seen, label, report):
        """
        Split C{addresses} into those that get C{item} and those that had
        it already (in this batch, C{seen}, or in an earlier cycle); the
        first are added to C{seen} before anything waits, so that a copy
        later in the batch sees them.

        @return: C{(fresh, duplicates)}.
        """
        key = item.key
        fresh, duplicates = [], []
        for address in addresses:
            if key is not None and ((key, address) in seen or state.isDuplicate(key, address)):
                duplicates.append(address)
            else:
                fresh.append(address)
                if key is not None:
                    seen.add((key, address))
        if duplicates:
            report.duplicates += len(duplicates)
            self._record(item, report, label, "duplicate for %s: dropped" % (", ".join(duplicates),),
                         "duplicate for %s: dropped" % (_addresses(duplicates),))
            await self._inThread(state.countDuplicates, len(duplicates))
        return fresh, duplicates

    async def _toPostmaster(self, item, state, label, report, why):
        """
        Deliver C{item} to the postmaster, for the reason C{why}; when the
        postmaster cannot take it, hold it (L{_hold}), never drop it.

        @return: whether the postmaster took it.
        @raise errors.TemporaryFailure: the postmaster's delivery failed for
            now; the message stays at the server for the next cycle.
        """
        try:
            delivered, refused, messageId = await self._deliver(item, [self.postmaster], suffix="/postmaster")
        except errors.PermanentFailure as e:
            delivered, refused = [], {self.postmaster: e.detail}
        if delivered:
            report.copies += 1
            self._record(item, report, label, "%s: to the postmaster" % (why,),
                         "to the postmaster <%s> as %s: %s" % (self.postmaster, messageId, why))
            return True
        await self._hold(item, state, label, report, "%s; the postmaster %s cannot take it: %s"
                        % (why, self.postmaster, refused[self.postmaster]))
        return False

    async def _bounce(self, item, sender, unknown):
        item.spool.seek(0)
        original = item.spool.read(100 * 1024)
        data = dsn.buildDSN(
            self.hostname,
            sender,
            item.uid,
            item.firstSeen,
            [dsn.RecipientStatus(a, "failed", "5.1.1", diagnostic="unknown local user")
             for a in unknown or ["postmaster@" + self.hostname]],
            original,
        )
        envelope = Envelope("", protocol="POP3", trusted=True, receivedAt=item.firstSeen,
                            deliveryKey="%s/%s/bounce" % (self.name, item.uid), again=item.again)
        await self._send(envelope, sender, data)

    async def _notice(self, text):
        await self._send(
            Envelope("", protocol="POP3", trusted=True),
            self.postmaster,
            ("From: MAILER-DAEMON@%s\r\nTo: %s\r\n" % (self.hostname, self.postmaster)).encode()
            + text.encode("utf-8"),
        )

    async def _send(self, envelope, recipient, data):
        """
        Deliver a message of our own (a DSN, a notice) to C{recipient}.
        """
        delivery = await defer.maybeDeferred(self.pipeline.startDelivery, envelope)
        try:
            await defer.maybeDeferred(delivery.addRecipient, recipient)
            delivery.write(data)
        except BaseException:
            delivery.abort()
            raise
        await defer.maybeDeferred(delivery.commit)

    def _received(self, envelope, recipients):
        return receivedField(
            self.account.host,
            self.hostname,
            "POP3",
            envelope.messageId,
            self._clock(),
            recipient=recipients[0] if len(recipients) == 1 else None,
            comment=self.name,
        )

    # --- files ---------------------------------------------------------------

    def _archive(self, spool, uid, firstSeen):
        """
        Keep the raw bytes as downloaded, before any parsing (worker thread).
        """
        name = "%s.%s.%s.eml" % (
            time.strftime("%Y%m%d-%H%M%S", time.gmtime(firstSeen)),
            self.name.replace("/", "_"),
            hashlib.sha256(uid.encode("utf-8")).hexdigest()[:16],
        )
        os.makedirs(self.settings.archiveDir, mode=0o700, exist_ok=True)
        _copyDurably(spool, os.path.join(self.settings.archiveDir, name))

    async def _hold(self, item, state, label, report, why):
        """
        Keep the downloaded C{item} for the administrator instead of
        delivering it: its bytes in L{heldDir}, when and C{why} in the
        state file, both durably, before it may be deleted at the server;
        logged at warn.
        """
        fileName = await self._inThread(self._keep, item, state, why)
        report.held += 1
        item.held = True
        self._record(item, report, label, "%s: held in %s" % (why, self.heldDir),
                     "held in %s: %s" % (os.path.join(self.heldDir, fileName), why))

    def _keep(self, item, state, why):
        """
        The work of L{_hold}, in a worker thread.  The file is named after
        the source, the UIDL and when it was first seen: the same message
        held again after a crash takes the same file, another that came
        later with a reused UIDL (RFC 1939 section 7) does not.

        @return: the name of the held file.
        """
        key = "%s/%s/%r" % (self.name, item.uid, item.firstSeen)
        fileName = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".eml"
        _copyDurably(item.spool, os.path.join(self.heldDir, fileName))
        state.recordHeld(fileName, item.uid, why)
        return fileName

    def _inThread(self, f, *args):
        return self._runInThread(f, *args)


def _copyDurably(spool, path):
    spool.seek(0)
    writeFileAtomically(path, spool.read())


def _digest(spool):
    spool.seek(0)
    digest = hashlib.sha256()
    for chunk in iter(lambda: spool.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _fingerprint(head, spool):
    spool.seek(head.size)
    return fingerprint(head, iter(lambda: spool.read(_CHUNK), b""))


def _describe(item):
    """
    @return: how the log names the downloaded C{item}: its Message-ID and
        its UIDL.
    """
    messageId = item.head.values("message-id")[:1]
    return "%s (UIDL %s)" % (printable(messageId[0].strip()) if messageId else "without Message-ID",
                             printable(item.uid))


def _addresses(addresses):
    """
    @return: C{addresses} as a log line names them, C{<a@b>, <c@d>}.
    """
    return ", ".join("<%s>" % (address,) for address in addresses)


class CollectorService(PeriodicCollection):
    """
    Runs one L{Collector} periodically.
    """

    def __init__(self, collector, interval, clock=None, firstDelay=5):
        PeriodicCollection.__init__(self, interval, clock, firstDelay)
        self.collector = collector

    def runNow(self):
        """
        See L{PeriodicCollection.runNow}: one cycle, firing with its
        L{CycleReport}.
        """
        return self.collector.collect()

    def close(self):
        self.collector.close()
