# -*- test-case-name: tests.test_queue -*-
"""
The outbound queue: a durable spool of messages for remote recipients.

This module is past ~800 lines on purpose: the spool's files, the states
of an entry (staged, admitted, withdrawn) and their recovery after a crash
are one set of rules, described here and kept by every method.

Layout of the queue directory::

    msg/<id>      the message exactly as it will be sent, written once
    env/<id>      its envelope and the state of each recipient (JSON)
    corrupt/      files that could not be read, moved aside for the admin
    held          the domains on hold (JSON list)

Each message body is stored once whatever the number of recipients; the
state of every recipient (pending, sent, failed, bounced; attempts, next
attempt, last diagnostic) lives beside it in C{env/<id>}.

Invariants:
 - A transaction's commit (L{startDelivery}) fires only once C{msg/<id>} and C{env/<id>} are
   fsynced under their final names and both directories are fsynced: that is
   when SMTP answers 250.
 - C{env/<id>} is the commit point.  It is renamed into place after
   C{msg/<id>}; a C{msg/} file with no C{env/} file is what a crash left
   before the 250, and is removed on load.
 - C{env/<id>} changes only by replacement (write, fsync, rename, fsync the
   directory), one write at a time per message (L{QueueEntry.lock}), and the
   files go away, C{env/} first, once no recipient is left to deliver or to
   report.  A state written is never older than one written before it.
 - A file that cannot be read on load is moved to C{corrupt/} with its
   partner and reported; the rest of the queue keeps flowing.
 - A L{SpoolQueue.stage}d entry is on disk but not handed to delivery until
   L{SpoolQueue.admit}; L{SpoolQueue.withdraw} removes it, C{env/} first,
   and fsyncs C{env/} before it reports success.
"""

import json
import os
import re
import time

from twisted.internet import defer
from zope.interface import implementer

from mdpy import errors
from mdpy.address import splitAddress
from mdpy.backends.files.committer import commitBatch, writerFor
from mdpy.delivery.targets import QueuedDelivery, QueueTarget
from mdpy.durable import (
    fsyncDirectory,
    startWriteback,
    unlinkQuietly,
    writeAll,
    writeFileAtomically,
)
from mdpy.interfaces import BOUNCED, FAILED, PENDING, SENT, IOutboundQueue
from mdpy.logs import Logger

STATES = (PENDING, SENT, FAILED, BOUNCED)

FORMAT_VERSION = 1
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

log = Logger()


class QueuedRecipient:
    """
    One recipient of a queued message and where its delivery stands.

    @ivar state: L{PENDING}, L{SENT}, L{FAILED} (permanently; the sender is
        still to be told) or L{BOUNCED} (failed and told, or nobody to tell).
    @ivar attempts: delivery attempts so far.
    @ivar due: when the next attempt may start (seconds since the epoch).
    @ivar status: the RFC 3463 status of the last attempt, or L{None}.
    @ivar diagnostic: the RFC 3464 Diagnostic-Code of the last attempt
        (C{"smtp; 451 4.3.0 ..."}), or L{None}.
    @ivar reason: a text for the sender when there is no remote reply
        (C{"connection refused"}), or L{None}.
    @ivar remoteMTA: the host that gave the last reply, or L{None}.
    @ivar lastAttempt: when the last attempt ended, or L{None}.
    @ivar active: whether a delivery of it is under way (not stored).
    """

    FIELDS = ("address", "state", "attempts", "due", "status", "diagnostic", "reason", "remoteMTA", "lastAttempt")

    def __init__(self, address, state=PENDING, attempts=0, due=0.0, status=None,
                 diagnostic=None, reason=None, remoteMTA=None, lastAttempt=None):
        self.address = address
        self.state = state
        self.attempts = attempts
        self.due = due
        self.status = status
        self.diagnostic = diagnostic
        self.reason = reason
        self.remoteMTA = remoteMTA
        self.lastAttempt = lastAttempt
        self.active = False
        self.domain = splitAddress(address)[1].lower()

    def toJSON(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def fromJSON(cls, data):
        values = {name: data.get(name) for name in cls.FIELDS}
        if not isinstance(values["address"], str) or values["state"] not in STATES:
            raise ValueError("bad recipient")
        values["attempts"] = int(values["attempts"] or 0)
        values["due"] = float(values["due"] or 0)
        # Earlier versions stored the repr of some exceptions.
        values["reason"] = errors.withoutReprs(values["reason"])
        return cls(**values)


class QueueEntry:
    """
    One queued message.

    @ivar id: the queue id (the envelope's message id).
    @ivar sender: the envelope sender; C{""} for the null sender.
    @ivar created: when it was queued.
    @ivar size: octets of C{msg/<id>}.
    @ivar eightBit: whether the message has octets above 127.
    @ivar smtputf8: whether it needs SMTPUTF8 (RFC 6531).
    @ivar warned: whether the sender was told of a delay.
    @ivar recipients: L{QueuedRecipient}s.
    @ivar lock: serialises the writes of this entry's state.
    @ivar removed: set once its files are gone; later changes are ignored.
    """

    def __init__(self, id, sender, created, recipients, size=0, eightBit=False,
                 smtputf8=False, warned=False, authenticatedAs=None):
        self.id = id
        self.sender = sender
        self.created = created
        self.recipients = recipients
        self.size = size
        self.eightBit = eightBit
        self.smtputf8 = smtputf8
        self.warned = warned
        self.authenticatedAs = authenticatedAs
        self.lock = defer.DeferredLock()
        self.removed = False
        self.queue = None

    def __repr__(self):
        return "<QueueEntry %s from <%s> to %d>" % (self.id, self.sender, len(self.recipients))

    def inState(self, *states):
        return [r for r in self.recipients if r.state in states]

    @property
    def finished(self):
        """
        Whether nothing is left to deliver or report.
        """
        return all(r.state in (SENT, BOUNCED) for r in self.recipients)

    def openBody(self):
        """
        @return: the message file, opened for reading.
        """
        return open(self.queue.bodyPath(self.id), "rb")

    def toJSON(self):
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "id": self.id,
                "sender": self.sender,
                "created": self.created,
                "size": self.size,
                "eightBit": self.eightBit,
                "smtputf8": self.smtputf8,
                "warned": self.warned,
                "authenticatedAs": self.authenticatedAs,
                "recipients": [r.toJSON() for r in self.recipients],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def fromJSON(cls, data):
        """
        @raise ValueError: C{data} is not a queue entry.
        """
        value = json.loads(data.decode("utf-8"))
        if not isinstance(value, dict) or value.get("version") != FORMAT_VERSION:
            raise ValueError("unknown format")
        if not isinstance(value.get("id"), str) or not _ID.match(value["id"]):
            raise ValueError("bad id")
        if not isinstance(value.get("sender"), str):
            raise ValueError("bad sender")
        recipients = [QueuedRecipient.fromJSON(r) for r in value.get("recipients") or ()]
        if not recipients:
            raise ValueError("no recipients")
        return cls(
            value["id"],
            value["sender"],
            float(value["created"]),
            recipients,
            size=int(value.get("size") or 0),
            eightBit=bool(value.get("eightBit")),
            smtputf8=bool(value.get("smtputf8")),
            warned=bool(value.get("warned")),
            authenticatedAs=value.get("authenticatedAs"),
        )


class _Spooling:
    """
    What the writer thread needs to put one message in the queue.
    """

    def __init__(self, queue, entry, parts, signer):
        self.queue = queue
        self.entry = entry
        self.parts = parts
        self.signer = signer


def _prepareEntry(spooling):
    """
    Write the C{msg/} and C{env/} files of one message under temporary names
    (worker thread), and start writing them out; L{commitBatch} fsyncs them
    with those of the other messages of its batch.  DKIM signing happens
    here, off the reactor.

    @return: C{[(tmpPath, finalPath, fd)]}, the message first.
    """
    queue, entry = spooling.queue, spooling.entry
    msgTmp = queue.bodyPath(entry.id) + ".tmp"
    envTmp = queue.envPath(entry.id) + ".tmp"
    written, fds = [], []
    try:
        parts = spooling.parts
        if spooling.signer is not None:
            data = b"".join(
                p if isinstance(p, bytes) else p.read() for p in parts
            )
            parts = [spooling.signer.sign(data), data]
        fd = os.open(msgTmp, _CREATE, 0o600)
        written.append(msgTmp)
        fds.append(fd)
        entry.size, entry.eightBit = _writeAndInspect(fd, parts)
        startWriteback(fd)
        fd = os.open(envTmp, _CREATE, 0o600)
        written.append(envTmp)
        fds.append(fd)
        writeAll(fd, entry.toJSON())
        startWriteback(fd)
    except BaseException as e:
        for fd in fds:
            os.close(fd)
        for path in written:
            unlinkQuietly(path)
        if isinstance(e, OSError):
            raise errors.storageFailure("queue " + entry.id, e) from e
        raise
    return [
        (msgTmp, queue.bodyPath(entry.id), fds[0]),
        (envTmp, queue.envPath(entry.id), fds[1]),
    ]


def _writeAndInspect(fd, parts):
    """
    @return: C{(size, eightBit)} of what was written.
    """
    size, eightBit = 0, False
    for part in parts:
        if isinstance(part, (bytes, bytearray, memoryview)):
            chunks = [part]
        else:
            chunks = iter(lambda: part.read(65536), b"")
        for chunk in chunks:
            if not chunk:
                continue
            if not eightBit and _EIGHT_BIT.search(chunk):
                eightBit = True
            size += writeAll(fd, chunk)
    return size, eightBit


def _commitOne(spooling):
    failure = commitBatch(_prepareEntry, [spooling])[0]
    if failure is not None:
        failure.raiseException()


@implementer(IOutboundQueue)
class SpoolQueue:
    """
    The queue on disk, with every entry also held in memory (the relay works
    from memory; the files are for restarts).

    @ivar entries: C{{id: QueueEntry}}.
    @ivar held: domains on hold.
    @ivar quarantined: C{[(id, reason)]} of entries moved to C{corrupt/}.
    @ivar listeners: callables called with each new L{QueueEntry} and after
        L{flush} and L{release} (with L{None}).
    @ivar signerFor: C{signerFor(domain)} returning a DKIM signer (with a
        C{sign(message)} method giving the header to prepend) or L{None}.
    """

    def __init__(self, path, reactor=None, runInThread=None, signerFor=None,
                 clock=None, committerThreads=1, groupCommit=None):
        self.path = path
        self.entries = {}
        self._staged = {}
        self.held = set()
        self.quarantined = []
        self.listeners = []
        self.signerFor = signerFor
        self._clock = clock
        self._committer, self._runInThread = writerFor(
            reactor, _prepareEntry, committerThreads, runInThread, groupCommit, joinWhileWriting=True)
        for sub in ("msg", "env", "corrupt"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)

    def __repr__(self):
        return "<SpoolQueue %s>" % (self.path,)

    def _now(self):
        return self._clock.seconds() if self._clock is not None else time.time()

    def bodyPath(self, id):
        return os.path.join(self.path, "msg", id)

    def envPath(self, id):
        return os.path.join(self.path, "env", id)

    @property
    def heldPath(self):
        return os.path.join(self.path, "held")

    # --- loading ---------------------------------------------------------------

    def load(self, grace=0):
        """
        Read the queue left on disk: entries, held domains; remove what a
        crash left half-written; quarantine what cannot be read.

        @param grace: seconds: while other processes may write to the
            queue (L{adopt}), files younger than this may be theirs, being
            written or staged: they are left for a later L{pickUp}.
        @return: the number of entries loaded.
        """
        try:
            self.held = readHeld(self.path)
        except (OSError, ValueError, TypeError) as e:
            log.error("queue: cannot read {path}: {why}; no domain held", path=self.heldPath, why=e)
        self._takeFromDisk(grace)
        return len(self.entries)

    def pickUp(self, grace):
        """
        Take into the queue the entries on disk it does not hold yet (written
        by another process, which may have failed to L{adopt} them) once
        they are C{grace} seconds old, and remove what is left of writes that
        never reached their commit point, as old.  Listeners hear of each
        entry taken.

        @return: the entries taken.
        """
        taken = self._takeFromDisk(grace)
        for entry in taken:
            log.info("queue: {id} taken from the spool, where another process put it", id=entry.id)
            self._notify(entry)
        return taken

    def _takeFromDisk(self, grace):
        envDir = os.path.join(self.path, "env")
        msgDir = os.path.join(self.path, "msg")
        oldEnough = time.time() - grace

        def old(path):
            return grace <= 0 or _olderThan(path, oldEnough)

        known = set(self.entries) | set(self._staged)
        taken = []
        for name in sorted(os.listdir(envDir)):
            if name in known:
                continue
            path = os.path.join(envDir, name)
            if not old(path):
                known.add(name)  # its msg/ file may be young too
            elif name.endswith(".tmp"):
                unlinkQuietly(path)
            else:
                known.add(name)
                entry = self._read(name)
                if entry is not None:
                    taken.append(entry)
        for name in os.listdir(msgDir):
            path = os.path.join(msgDir, name)
            if name not in known and _withoutTmp(name) not in known and old(path):
                # Written before a crash that came before its commit point.
                unlinkQuietly(path)
        return taken

    def adopt(self, id):
        """
        Take up the entry C{id} that another process (a server sharing the
        data directory, the C{mdpy} command) queued, so that it is
        delivered here; listeners hear of it as of an entry queued here.

        @return: the L{QueueEntry}, or L{None} when it is held already or
            not on disk (delivered or removed meanwhile).
        """
        if id in self.entries or id in self._staged or not _ID.match(id):
            return None
        if not os.path.exists(self.envPath(id)):
            return None
        entry = self._read(id)
        if entry is not None:
            self._notify(entry)
        return entry

    def forget(self, entry):
        """
        Stop holding C{entry}, which another process delivers (the one
        that runs the queue of a shared data directory); its files stay.
        """
        if self.entries.get(entry.id) is entry:
            del self.entries[entry.id]

    def _read(self, id):
        """
        Read the entry C{id} into L{entries}, or quarantine its files.

        @return: the L{QueueEntry}, or L{None}.
        """
        try:
            with open(self.envPath(id), "rb") as f:
                entry = QueueEntry.fromJSON(f.read())
            if entry.id != id:
                raise ValueError("id %s does not match its file name" % (entry.id,))
            if not os.path.exists(self.bodyPath(id)):
                raise ValueError("its message file is missing")
        except FileNotFoundError:
            return None  # delivered and removed meanwhile
        except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            self._quarantineFiles(id, str(e))
            return None
        entry.queue = self
        for recipient in entry.recipients:
            if recipient.state == PENDING and recipient.due < entry.created:
                recipient.due = entry.created
        self.entries[entry.id] = entry
        return entry

    def _quarantineFiles(self, id, reason):
        corrupt = os.path.join(self.path, "corrupt")
        for path in (self.envPath(id), self.bodyPath(id)):
            if os.path.exists(path):
                kind = os.path.basename(os.path.dirname(path))
                try:
                    os.rename(path, os.path.join(corrupt, "%s.%s" % (os.path.basename(path), kind)))
                except OSError:
                    pass
        self.quarantined.append((id, reason))
        log.error(
            "queue: {id} moved to {dir}: {why}",
            id=id,
            dir=corrupt,
            why=reason,
        )

    def quarantine(self, entry, reason):
        """
        Take C{entry} out of the queue because its files cannot be used.
        """
        self.entries.pop(entry.id, None)
        entry.removed = True
        return entry.lock.run(lambda: self._runInThread(self._quarantineFiles, entry.id, reason))

    # --- IDeliveryTarget ------------------------------------------------------

    def startDelivery(self, envelope):
        """
        See L{IDeliveryTarget.startDelivery}: a transaction that queues the
        message for every recipient added, the pipeline's own
        (L{mdpy.delivery.targets.QueueTarget}).
        """
        return _QueueTransaction(QueueTarget(self), envelope)

    def enqueue(self, envelope, recipients, parts):
        """
        Queue one message: L{stage} it (the arguments are those of
        L{IOutboundQueue.stage}), then L{admit} it.

        @return: a L{Deferred} firing with the L{QueueEntry} once it is on
            disk.
        """
        d = self.stage(envelope, recipients, parts)
        d.addCallback(self.admit)
        return d

    def stage(self, envelope, recipients, parts):
        """
        See L{IOutboundQueue.stage}: the envelope's message id becomes the
        queue id.
        """
        if not recipients:
            return defer.fail(errors.PermanentFailure("no recipients"))
        id = envelope.messageId
        if id in self.entries or id in self._staged or not _ID.match(id):
            return defer.fail(errors.TemporaryFailure("queue id %r in use or malformed" % (id,)))
        now = self._now()
        entry = QueueEntry(
            id,
            envelope.sender,
            now,
            [QueuedRecipient(address, due=now) for address in recipients],
            smtputf8=envelope.smtputf8,
            authenticatedAs=envelope.authenticatedAs,
        )
        entry.queue = self
        signer = None
        if self.signerFor is not None and envelope.sender:
            signer = self.signerFor(splitAddress(envelope.sender)[1])
        spooling = _Spooling(self, entry, parts, signer)
        self._staged[id] = entry
        if self._committer is not None:
            d = defer.Deferred()
            self._committer.commit(spooling, d)
        else:
            d = self._runInThread(_commitOne, spooling)
        d.addCallbacks(lambda _: entry, self._ebStage, errbackArgs=(id,))
        return d

    def _ebStage(self, failure, id):
        del self._staged[id]
        return failure

    def admit(self, entry):
        """
        See L{IOutboundQueue.admit}.
        """
        del self._staged[entry.id]
        self.entries[entry.id] = entry
        # Debug: the receiving side (SMTP, a DSN) logged the message already.
        log.debug(
            "queue: {id} from <{sender}> to {rcpts} size={size}",
            id=entry.id,
            sender=entry.sender,
            rcpts=",".join("<%s>" % (r.address,) for r in entry.recipients),
            size=entry.size,
        )
        self._notify(entry)
        return entry

    def withdraw(self, entry):
        """
        See L{IOutboundQueue.withdraw}: its files go, C{env/} first, and
        C{env/} is fsynced.
        """
        del self._staged[entry.id]
        entry.removed = True
        return self._runInThread(self._removeStaged, entry.id)

    def _removeStaged(self, id):
        # env/ first: it is the commit point, and a msg/ file alone is
        # removed on load.
        os.unlink(self.envPath(id))
        fsyncDirectory(os.path.join(self.path, "env"))
        unlinkQuietly(self.bodyPath(id))

    def _notify(self, entry):
        for listener in list(self.listeners):
            try:
                listener(entry)
            except Exception:
                log.failure("queue: listener failed")

    # --- state changes ---------------------------------------------------------

    def save(self, entry):
        """
        Make the state of C{entry} durable: replace its C{env/} file, or
        remove its files when it is L{QueueEntry.finished}.

        @return: a L{Deferred} firing when that is on disk.
        """
        return entry.lock.run(self._save, entry)

    def _save(self, entry):
        if entry.removed:
            return defer.succeed(None)
        if entry.finished:
            entry.removed = True
            self.entries.pop(entry.id, None)
            # env/ first: it is the commit point, and a msg/ file alone is
            # removed on load.
            unlinkQuietly(self.envPath(entry.id))
            unlinkQuietly(self.bodyPath(entry.id))
            return defer.succeed(None)
        return self._runInThread(writeFileAtomically, self.envPath(entry.id), entry.toJSON())

    # --- IOutboundQueue --------------------------------------------------------

    def list(self):
        """
        See L{IOutboundQueue.list}: entries, oldest first.
        """
        return sorted(self.entries.values(), key=lambda e: (e.created, e.id))

    def flush(self):
        """
        See L{IOutboundQueue.flush}.
        """
        now = self._now()
        for entry in self.entries.values():
            for recipient in entry.recipients:
                if recipient.state == PENDING and recipient.due > now:
                    recipient.due = now
        self._notify(None)

    def remove(self, messageId):
        """
        See L{IOutboundQueue.remove}.
        """
        entry = self.entries.get(messageId)
        if entry is None:
            raise errors.NotFound("no such queued message: %s" % (messageId,))
        for recipient in entry.recipients:
            recipient.state = BOUNCED
        log.info("queue: {id} deleted by the administrator", id=messageId)
        return self.save(entry)

    def inspect(self):
        """
        See L{IOutboundQueue.inspect}: the files as they are, read without
        taking part in the queue, so a running server is not disturbed.
        """
        entries, unreadable = readQueue(self.path)
        try:
            held = readHeld(self.path)
        except (OSError, ValueError, TypeError):
            held = set()
        return entries, held, unreadable

    def discard(self, messageId):
        """
        See L{IOutboundQueue.discard}: its envelope file goes first, so a
        crash between the two leaves a body that the next load removes.
        """
        if not _ID.match(messageId):
            raise errors.NotFound("no such queued message: %s" % (messageId,))
        removed = False
        for path in (self.envPath(messageId), self.bodyPath(messageId)):
            if os.path.exists(path):
                os.unlink(path)
                removed = True
        if not removed:
            raise errors.NotFound("no such queued message: %s" % (messageId,))

    def hold(self, domain):
        """
        See L{IOutboundQueue.hold}.
        """
        domain = domain.lower()
        if domain not in self.held:
            self.held.add(domain)
            self._saveHeld()

    def release(self, domain):
        """
        See L{IOutboundQueue.release}.
        """
        domain = domain.lower()
        if domain in self.held:
            self.held.discard(domain)
            self._saveHeld()
        ids = [
            entry.id
            for entry in self.list()
            if any(r.state == PENDING and r.domain == domain for r in entry.recipients)
        ]
        self.flush()
        return ids

    def isHeld(self, domain):
        return domain.lower() in self.held

    def _saveHeld(self):
        writeFileAtomically(self.heldPath, json.dumps(sorted(self.held)).encode("utf-8"))

    def due(self, now=None):
        """
        @return: C{[(entry, recipient)]} ready for delivery now: pending, not
            under way, due, and not for a held domain.
        """
        now = self._now() if now is None else now
        held = self.held
        return [
            (entry, recipient)
            for entry in self.list()
            for recipient in entry.recipients
            if recipient.state == PENDING
            and not recipient.active
            and recipient.due <= now
            and recipient.domain not in held
        ]

    def nextDue(self):
        """
        @return: the earliest time a pending recipient not under way is due,
            or L{None}.
        """
        times = [
            r.due
            for entry in self.entries.values()
            for r in entry.recipients
            if r.state == PENDING and not r.active and r.domain not in self.held
        ]
        return min(times) if times else None


def _withoutTmp(name):
    return name[:-len(".tmp")] if name.endswith(".tmp") else name


def _olderThan(path, when):
    """
    @return: whether the file C{path} was last changed before C{when}
        (seconds since the epoch); L{False} when it is gone.
    """
    try:
        return os.stat(path, follow_symlinks=False).st_mtime < when
    except FileNotFoundError:
        return False


def readHeld(path):
    """
    @return: the set of domains held in the queue directory C{path}.
    @raise OSError, ValueError, TypeError: the file cannot be read.
    """
    try:
        with open(os.path.join(path, "held"), "rb") as f:
            return {str(domain) for domain in json.loads(f.read().decode("utf-8"))}
    except FileNotFoundError:
        return set()


def readQueue(path):
    """
    Read the entries of a queue directory without taking part in it (for
    C{mdpy queue list} while a server may be running).

    @return: C{(entries, unreadable)}: L{QueueEntry}s oldest first, and the
        names of files that could not be read.
    """
    entries, unreadable = [], []
    envDir = os.path.join(path, "env")
    try:
        names = sorted(os.listdir(envDir))
    except FileNotFoundError:
        return entries, unreadable
    for name in names:
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(envDir, name), "rb") as f:
                entries.append(QueueEntry.fromJSON(f.read()))
        except FileNotFoundError:
            continue  # delivered meanwhile
        except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError):
            unreadable.append(name)
    entries.sort(key=lambda e: (e.created, e.id))
    return entries, unreadable


class _QueueTransaction(QueuedDelivery):
    """
    The pipeline's transaction of the queue (L{QueuedDelivery}), whose
    commit fires with the L{QueueEntry} it admitted.
    """

    def commit(self):
        return QueuedDelivery.commit(self).addCallback(lambda _: self.committed)
