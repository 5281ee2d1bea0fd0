# -*- test-case-name: tests.test_interfaces -*-
"""
The seams of mdpy.

This module is past ~800 lines on purpose: it is the one place where every
seam is written down, so that a backend author reads one file, and the
docstrings here are the specification the contract suites test.

Everything a protocol needs from storage, and everything a storage needs from
the outside, is said here once.  Implementations declare C{@implementer(...)}
and refer to these docstrings instead of repeating them.  None of these
interfaces knows of SMTP, POP3 or IMAP: protocols adapt them.

Any method documented as returning a value may instead return a L{Deferred}
firing with that value, unless it says "synchronous".  Failures are the
protocol-neutral exceptions of L{mdpy.errors}.

Threading
=========

Everything the protocols, the delivery pipeline, the relay and the
collectors do runs on the reactor thread, and so does every call they make
through these interfaces.  A call may block only for as long as reading
memory takes: whatever touches a disk, a database or the network happens in
the backend (L{IBackend}), which returns a L{Deferred} and does the work
where it likes.  The files backend (L{mdpy.backends.files}) runs its
blocking work in one thread pool that the server hands it
(L{mdpy.backends.files.blocking}), except a message read that the kernel
can serve from the page cache without waiting (C{RWF_NOWAIT}), and the
locked transactions of flag changes, expunges and appends of messages
held in memory: they run on the reactor thread when their folder's lock
is free, and leave the syncs that make them durable to the kernel
(Linux's asynchronous C{fsync}, L{mdpy.backends.files.kernelsync}) or to
a thread of the pool; the memory backend returns values or fired
Deferreds.  So callers wrap each call in C{defer.maybeDeferred} (or
C{await} it) and never start a thread themselves, and nothing outside
C{mdpy.backends} uses a thread pool.  A Deferred fires on the reactor
thread; a view (an L{IMailbox}) changes only there, when one of its own
Deferreds fires.

Methods marked "synchronous" return plain values and are quick: counters
and views already in memory (L{IMailbox.messages}), listener registration.
Three seams are synchronous although a backend may read a file for them:
L{IDirectory}, whose lookups are short indexed reads that the SMTP and
authentication paths make for every recipient and login;
L{ILoginFailures}, the counts the login limits decide each login by, as
short; and L{IMessageCache}, a cache of derived data.  A backend that
cannot answer those in about the time of a local index read keeps them in
memory.  L{IMaildropLocks} is synchronous too: taking a lock never waits.
The state of a collected source (L{ICollectorStates.stateOf}) is a
blocking object that the collector calls through L{IBackend.runBlocking}.
"""

from zope.interface import Attribute, Interface


# --- delivery ---------------------------------------------------------------


class IDeliveryTarget(Interface):
    """
    Something mail can be handed to: the pipeline, the local store, the
    outbound queue, the hold of a gateway domain.  Targets nest: the
    pipeline (L{mdpy.delivery.pipeline.DeliveryPipeline}) routes each
    recipient to another target, and commits over all of them at once (see
    L{ITwoPhaseDelivery}).
    """

    def startDelivery(envelope):
        """
        Begin one transaction.

        @param envelope: the sender and session facts.
        @type envelope: L{mdpy.envelope.Envelope}
        @return: an L{IDelivery}.
        @raise mdpy.errors.MailError: the sender is refused.
        """


class ICheck(Interface):
    """
    A check of incoming mail (SPF, DKIM, spam or virus scanning, a site's
    own rule), which the delivery pipeline runs, in the order configured
    (C{[smtp] checks}), on every message it is given, whichever protocol
    brought it.  A check runs at one stage: when the sender is given
    (C{"mail"}), at each recipient (C{"rcpt"}) or at the end of the message
    (C{"data"}).  The first refusal stops the transaction (or, at C{"rcpt"},
    that recipient); the headers of every verdict are prepended to the
    stored copies.  A check decides itself which mail it looks at: the
    envelope says whether the client logged in (C{authenticatedAs}) or is
    the server itself (C{trusted}).
    """

    name = Attribute("The check's name, for logs.")
    stage = Attribute(
        "When it runs: L{mdpy.checks.MAIL}, L{mdpy.checks.RCPT} or L{mdpy.checks.DATA}.")

    def check(envelope, recipient=None, message=None):
        """
        Check one message at this check's stage.

        @param envelope: the sender and session facts.
        @type envelope: L{mdpy.envelope.Envelope}
        @param recipient: at C{"rcpt"}, the recipient as given; else L{None}.
        @param message: at C{"data"}, the message as received (its first
            L{mdpy.delivery.pipeline.CHECK_SIZE} octets, plus one when it is longer);
            else L{None}.
        @return: a L{Deferred} firing with a L{mdpy.checks.Verdict}: accept,
            refuse with a protocol-neutral error, or add header fields.  A
            failure refuses the message for now, as an internal error.
        """


class IDelivery(Interface):
    """
    One transaction: recipients are added, the body is written, then it is
    committed or aborted.

    Invariants: C{commit} fires only after every copy is durably stored
    (survives a crash and a power cut); if it fails, no copy is visible to readers.  After
    C{abort}, nothing of the transaction remains.
    """

    def addRecipient(address):
        """
        Add a recipient.

        @param address: the recipient as given (e.g. SMTP RCPT TO).
        @type address: L{str}
        @return: L{None} when accepted.
        @raise mdpy.errors.MailError: this recipient is refused; the
            transaction goes on with the others.
        """

    def write(data):
        """
        Append body bytes (CRLF line endings, no dot-stuffing).  Synchronous:
        the implementation buffers or spills to disk itself.

        @type data: L{bytes}
        """

    def commit():
        """
        Store or hand on the message for every accepted recipient.

        @return: L{None} once durable.
        @raise mdpy.errors.MailError: nothing was stored.
        """

    def abort():
        """
        Throw the transaction away.  Synchronous; safe to call more than once
        and after a failed commit.
        """


class ITwoPhaseDelivery(IDelivery):
    """
    A transaction that can take part in one commit over several targets: it
    is first prepared (made durable but invisible), then committed (made
    visible) or aborted (taken back).  The outbound queue's transactions
    are (C{prepare} is L{IOutboundQueue.stage}, C{commit} L{IOutboundQueue.admit},
    C{abort} L{IOutboundQueue.withdraw}).

    The protocol, as the pipeline runs it over the transactions of one
    message (a two-phase commit with one "last resource"):

      1. C{prepare} every two-phase transaction, one after the other;
      2. C{commit} the one plain L{IDelivery} among them, if any (the local
         store, whose copies are visible to readers at once and cannot be
         taken back): the point of no return;
      3. C{commit} every prepared transaction.

    If a C{prepare} or the plain C{commit} fails, every prepared
    transaction is aborted and the whole commit fails: nothing was visible,
    so a client's retry delivers each copy once.  A message holds at most
    one plain transaction; a recipient that would need a second one is
    refused for now.

    Invariants: after C{prepare} fired, the message survives a crash and a
    power cut, and nothing of it is visible to readers (a crash leaves it
    prepared; the implementation decides, when it starts again, whether
    it becomes visible, as the queue does, or goes); C{commit} of a
    prepared transaction only makes it visible and does not fail for want
    of resources.  Without C{prepare}, C{commit} does both steps, so a
    two-phase transaction used alone keeps the contract of L{IDelivery}.
    """

    def prepare():
        """
        Make the message durable for every accepted recipient, invisible to
        readers until L{commit}.

        @return: L{None} once durable.
        @raise mdpy.errors.MailError: nothing was kept.
        """

    def abort():
        """
        Throw the transaction away, taking back what L{prepare} kept.  Safe
        to call more than once and after a failed commit.

        @return: L{None}, or after L{prepare} a L{Deferred} firing once
            the prepared message is gone (a failure to take it back is
            logged, never raised).
        """


# --- storage ----------------------------------------------------------------


class IMailStore(Interface):
    """
    The mailboxes of every local account.  Accounts are named by their
    normalised address (C{localpart@domain}).
    """

    def createAccount(address):
        """
        Make the account's mailbox tree (INBOX and its special folders) if
        missing.  Synchronous-safe to call again.
        """

    def deliver(copies, key=None, again=False):
        """
        Store new messages durably, all or nothing.  This is the one write
        path of local delivery (the pipeline's local target calls it).

        @param copies: a sequence of C{(account, folder, parts)}; C{parts} is a
            sequence of L{bytes} and binary files (read from their current
            position to the end) whose concatenation is the message.  A copy
            may have a fourth item, a text telling it apart from other copies
            of this delivery in the same folder (the recipient a catch-all
            copy was sent to); it is part of the copy's key.
        @param key: L{None}, or C{(seconds, text)} naming this delivery for
            good (a collected message: when it was first seen, and where
            from).  With C{again} (the delivery may have been committed
            before a crash), a copy of the same key, account, folder (and
            fourth item) that is in its folder already, read or not, is not
            stored twice.
        @return: L{None} once every copy is durably stored (what the
            backend keeps survives a crash and a power cut) and visible to
            readers.  On failure no copy is
            visible and nothing half-written remains.
        @raise mdpy.errors.NotFound: an account or folder does not exist.
        @raise mdpy.errors.TemporaryFailure: an I/O error (disk full, fsync).
        """

    def deleteAccount(address, archive=False):
        """
        Take the account's mail out of the store, at once and as a whole:
        from the moment this returns, a delivery to the account fails with
        L{mdpy.errors.NotFound} (it never makes a partial tree again), and an
        account made again under the address starts empty, each of its
        mailboxes with a UIDVALIDITY above any the old one had (RFC 3501
        section 2.3.1.1).  Synchronous.

        @param archive: keep the mail aside for the administrator instead of
            removing it.
        @return: L{None} when the account had no mail; else C{(where,
            keptAt)}, texts for people naming where the mail was and where
            it is kept now (L{None} once removed).
        """

    def deleteDomain(domain, archive=False):
        """
        Take the mail of every account of C{domain} out of the store, as
        L{deleteAccount} does for one.

        @return: See L{deleteAccount}.
        """

    def accountExists(address):
        """
        @return: whether the account has a mailbox tree.  Synchronous.
        """

    def listMailboxes(address):
        """
        @return: the folder names of the account, C{"INBOX"} first, with
            C{"/"} as the hierarchy separator (e.g. C{"Lists/Work"}).
        """

    def createMailbox(address, name):
        """
        Create a folder.  Folder names are checked before anything changes.

        @raise mdpy.errors.Exists: it exists.
        @raise mdpy.errors.LimitExceeded: the name is longer or deeper than
            the store can hold.
        @raise mdpy.errors.InvalidInput: a name the store cannot represent.
        """

    def deleteMailbox(address, name):
        """
        Delete a folder and its messages.  Names are checked as by
        L{createMailbox}.
        """

    def renameMailbox(address, old, new):
        """
        Rename a folder (and its children); nothing changes when a new name,
        of the folder or of a child, is refused as by L{createMailbox}.
        """

    def listSubscriptions(address):
        """
        @return: the folder names the account subscribed to (IMAP LSUB),
            sorted; they need not exist.  Synchronous.
        """

    def setSubscribed(address, name, subscribed):
        """
        Add or remove a folder name from the account's subscriptions.
        Synchronous.
        """

    def openMailbox(address, name="INBOX"):
        """
        @return: an L{IMailbox}, synchronised with what is stored.
        @raise mdpy.errors.NotFound: no such account or folder.
        """

    def usage(address):
        """
        Count what the account keeps, over all its folders (its quota's
        use, L{mdpy.quota}): cheap enough to run for each recipient of an
        account that has a quota, without reading a message.

        @return: an L{mdpy.quota.Usage}: the octets of its messages as
            stored and their number; zero for an account with no mail.
        """

    def addListener(address, listener):
        """
        Call C{listener(address, mailboxName)} after anything changes in a
        folder of that account (new mail, flags, expunge), whichever protocol
        or process made the change, and after this store made, deleted or
        renamed a folder (called for both names) or changed its
        subscription: a subscription to the store's L{IChangeFeed}.
        Synchronous.
        """

    def removeListener(address, listener):
        """
        Undo L{addListener}.  Synchronous.
        """


class IChangeFeed(Interface):
    """
    A mailbox changed (new mail, flags, expunge), made by any process that
    shares the store, or was made, deleted, renamed or (un)subscribed through
    this process's store: this is how an idling IMAP client hears of mail
    another process delivered, and what lets a backend be shared by several
    processes (another server, C{mdpy domainpop run}).  Accounts are named
    as by L{IMailStore}.  Subscribers are called on the reactor thread.
    """

    def subscribe(account, folder, callback):
        """
        Call C{callback(account, folder)} after a folder of C{account}
        changed.  Changes made in the same reactor turn may be reported
        once.  Synchronous.

        @param folder: the folder name (e.g. C{INBOX}), or L{None} for every
            folder of the account; these subscribers are also called with
            folder L{None} when a feed hearing other processes heard that
            the account's folders or subscriptions changed there, without
            knowing which.
        @return: a subscription whose C{unsubscribe()} ends the calls.
        """

    def notify(account, folder):
        """
        Tell the subscribers of C{folder} of C{account} (and those of the
        whole account) that it changed; folder L{None}: tell those of the
        whole account that its folders or subscriptions changed.
        Synchronous.
        """


class IMailbox(Interface):
    """
    One folder.  Messages are numbered by UIDs that never change for a message
    and are never reused for another one while C{uidValidity} stays the same.
    """

    name = Attribute("The folder name, C{INBOX} or e.g. C{Lists/Work}.")
    uidValidity = Attribute("L{int}: changes only if UIDs had to be reassigned.")
    uidNext = Attribute("L{int}: the UID the next new message will get.")
    highestModSeq = Attribute("L{int}: the modification sequence of the last change.")
    recentThreshold = Attribute(
        "L{int}: the highest UID claimed by any view (L{claimRecent}), as of the last sync: "
        "the messages above it are those no session has been told of yet.")

    def sync():
        """
        Take in what changed where the folder is stored since the last call
        (new messages from any source, flags changed or messages removed by
        another session, process or program).

        @return: L{None}.
        """

    def messages():
        """
        @return: the L{IStoredMessage}s present after the last L{sync}, in UID
            order.  Synchronous.  A message that changed since an earlier
            call is a new object; those given before are never changed (a
            session finds what changed by identity).
        """

    def claimRecent():
        """
        Take in what changed, as L{sync} does, and claim for this view the
        messages no session has been told of yet: those above
        L{recentThreshold}, which then rises to C{uidNext - 1}.  From this
        call on, whenever this view takes in new messages (L{sync}, or one
        of its own changes), it claims those no other view claimed first.

        A message is claimed by one view at most, ever: claims are atomic
        between every view and every process sharing the store, and
        survive a restart (this is IMAP's C{\\Recent}, RFC 3501 section
        2.3.2: the session that selects a mailbox read-write calls it).
        Messages the store held before it kept claims count as claimed.

        @return: the UIDs claimed by this call, ascending.
        """

    def claimedUids():
        """
        @return: the UIDs this view has claimed (L{claimRecent}), whether
            or not the messages are still there; a L{frozenset}.
            Synchronous.
        """

    def append(data, flags=(), internalDate=None):
        """
        Store a message durably in this folder.

        @param data: the message: L{bytes}, or a binary file read from its
            current position to its end (a large message spooled to disk is
            copied in chunks, never read into memory whole).  The caller
            keeps the file open until the result fires, and closes it.
        @param flags: IMAP-style flags and keywords (C{"\\\\Seen"}, C{"$Junk"}).
        @param internalDate: seconds since the epoch, or L{None} for now.
        @return: the new message's UID.
        """

    def appendMany(messages):
        """
        Store several messages durably in this folder, all or none (IMAP
        MULTIAPPEND, RFC 3502 section 3): if one cannot be stored, none is
        kept.

        @param messages: C{[(data, flags, internalDate)]}, each as the
            arguments of L{append}, except that C{data} may also be a
            L{list} of such octets and files, the parts of the message in
            order (IMAP CATENATE, RFC 4469).
        @return: the new messages' UIDs, ascending, in the order given.
        """

    def changeFlags(uids, flags, mode="replace", unchangedSince=None):
        """
        Change the flags of messages where they are stored, not in this
        view: under the folder's lock, each message's current flags are
        read (as another session or program may have changed them since
        the last L{sync}), changed and written back, so no change made
        meanwhile is lost (IMAP C{STORE}, RFC 3501 section 6.4.6).  The
        view takes in the result before the Deferred fires.

        @param uids: the UIDs of the messages.
        @param flags: IMAP-style flags and keywords; C{\\Recent} and system
            flags the store cannot keep are ignored.  Keywords compare
            without regard to case.
        @param mode: C{"add"} (C{+FLAGS}) adds C{flags} to the current ones,
            C{"remove"} (C{-FLAGS}) takes them away, C{"replace"}
            (C{FLAGS}) makes them the flags (L{mdpy.mailbox.ADD},
            L{mdpy.mailbox.REMOVE}, L{mdpy.mailbox.REPLACE}).
        @param unchangedSince: L{None}, or a modification sequence: a
            message whose modification sequence is higher is left as it is
            (RFC 7162 section 3.1.3), and the others get a new one even
            when their flags stay the same.
        @return: a L{dict} mapping each UID of C{uids} still in the folder
            to a L{mdpy.mailbox.StoredFlags}: the message's flags and
            modification sequence as now stored, and whether this call
            changed them.  A message whose flags stay the same keeps its
            modification sequence; UIDs not in the folder are left out.
        @raise mdpy.errors.LimitExceeded: a keyword cannot be stored (the
            folder holds as many as it can); no message was changed.
        """

    def setFlags(uid, flags):
        """
        Replace the flags of one message: C{changeFlags([uid], flags,
        "replace")}.

        @return: the message's modification sequence afterwards.
        @raise mdpy.errors.NotFound: no such UID.
        """

    def expunge(uids, deletedOnly=False):
        """
        Remove the messages with these UIDs, durably.

        @param deletedOnly: remove only those that have the flag
            C{\\Deleted} where they are stored, under the folder's lock
            (IMAP C{EXPUNGE}: a flag another session took away meanwhile
            is respected).
        @return: the UIDs that were removed: none when the UIDVALIDITY
            changed since this view last took in the folder (the UIDs may
            name other messages now).
        """

    def expungedSince(modSeq):
        """
        The messages that left the folder (expunged, moved away, removed by
        another program) after a modification sequence, from a bounded
        record the store keeps of them (IMAP QRESYNC, RFC 7162 sections
        3.2.5 and 3.2.6).  Where the folder is stored now, not in this
        view: a UID may still be in the view until the next L{sync}.

        @param modSeq: a modification sequence, as of L{highestModSeq}.
        @return: a L{Deferred} firing with the ascending UIDs that left
            after C{modSeq}, or with L{None} when the record no longer
            reaches back that far (or the UIDVALIDITY changed): then any
            UID below L{uidNext} not in the folder may have left since.
        """


class IMessageCache(Interface):
    """
    Derived data about the messages of a mailbox (the parsed MIME structure
    IMAP serves), kept beside the mailbox so it is computed once per message
    and not again after a restart.  A mailbox may provide it.  Entries are
    a cache: losing them costs only time.  Synchronous; used on the reactor
    thread.
    """

    def cachedData(key):
        """
        @param key: an L{IStoredMessage.key}.
        @return: the L{bytes} last stored for C{key}, or L{None}.
        """

    def cacheData(key, data):
        """
        Store C{data} for C{key}; failures are logged, never raised.
        """


class IStoredMessage(Interface):
    """
    One message in an L{IMailbox}.
    """

    uid = Attribute("L{int}")
    key = Attribute(
        "L{str}: a name unique in the whole store and stable for the message's"
        " life; POP3 UIDLs come from it."
    )
    flags = Attribute("L{frozenset} of L{str}")
    size = Attribute("L{int}: octets of the stored message (CRLF line endings).")
    internalDate = Attribute("L{float}: seconds since the epoch.")
    modSeq = Attribute("L{int}: modification sequence of the last change.")

    def open():
        """
        Open the message for reading, for a reader that streams it in
        chunks (POP3 C{RETR} of a large message).

        @return: a L{Deferred} firing with a binary file positioned at the
            start of the message, which the caller closes.
        @raise mdpy.errors.NotFound: the message was removed meanwhile.
        """

    def read():
        """
        Read the whole message (IMAP C{FETCH} and C{COPY}, POP3 C{RETR} of a
        small message).

        @return: a L{Deferred} firing with the message's octets with CR LF
            line endings (C{size} of them).
        @raise mdpy.errors.NotFound: the message was removed meanwhile.
        """


class IMaildropLocks(Interface):
    """
    Exclusive access to a POP3 maildrop while a session is in TRANSACTION
    state (RFC 1939 section 8), for every POP3 listener of every process
    sharing the backend: a second session gets C{[IN-USE]} (RFC 2449
    section 8.1.8) whichever process holds the first.  A lock a process
    held ends when that process ends, however it ends.

    Synchronous: a POP3 session takes the lock between PASS and its reply,
    and the lock must be decided before any other command of that session
    is read; taking one is a non-blocking kernel call (a file lock) or an
    update in memory, never a wait.
    """

    def acquire(account, holder):
        """
        @param account: the account's normalised address.
        @param holder: the session taking the lock (any object).
        @return: whether C{holder} now holds C{account}'s maildrop (again
            L{True} when it held it already): L{False} when another holder,
            in this process or another, has it.
        """

    def release(account, holder):
        """
        Give C{account}'s maildrop up, if C{holder} holds it.
        """


class ILoginFailures(Interface):
    """
    The failed logins counted by the login limits
    (L{mdpy.auth.checkers.FailedLoginTracker}), shared by every process
    sharing the backend, so that a guesser gains nothing by reaching
    another worker.  The tracker keeps the policy (the window, the
    thresholds, the delays, the logins being checked); the backend keeps
    only timed events, each C{(when, source, tag)} under a key (a client
    address, an account) of a named table.

    A tag tells a repeat (the same password tried again) from a new guess:
    L{bytes}, compared as they are, or L{None} (never a repeat).  Keys and
    sources are texts.

    Synchronous: the tracker decides every login on the reactor thread
    from these counts before the credentials are checked, as the
    authentication path reads L{IDirectory}; each call is one short indexed
    read or write of a few rows.  A backend that cannot answer that fast
    keeps them in memory.
    """

    def record(table, key, source, tag, now, since, maxEvents, maxKeys):
        """
        Count an event of C{key} at C{now}, unless C{tag} is not L{None}
        and an event of C{key} after C{since} has the same tag.  Events of
        C{table} at or before C{since} may be forgotten; C{key} keeps its
        C{maxEvents} latest, the table its C{maxKeys} keys with the latest
        events.

        @return: whether it was counted.
        """

    def recent(table, key, since):
        """
        @return: the events of C{key} after C{since}, oldest first, as a
            sequence of C{(when, source, tag)}.
        """

    def forget(table, key, source):
        """
        Forget the events of C{key} that came from C{source}.
        """

    def keys(table, since):
        """
        @return: how many keys of C{table} have an event after C{since}.
        """


class IRemoteAccounts(Interface):
    """
    The remote POP3 accounts users collect into their INBOX (MultiPOP,
    C{mdpy multipop add}).  Each account is a L{dict}: C{id}, C{user} (the
    local address), C{host}, C{port}, C{tls} (one of
    L{mdpy.tls.TLS_MODES}), C{username}, C{password} (kept as given: it
    must be sent as it is), C{leave_on_server_days}.  A change made by one
    process (the C{mdpy} command) is seen by the others at their next
    L{list}.
    """

    def list():
        """
        @return: every account, in the order they were added.
        @raise mdpy.errors.TemporaryFailure: they cannot be read.
        """

    def add(user, host, port=110, tls="starttls", username="", password="", leaveOnServerDays=0):
        """
        @return: the new account's id.
        @raise mdpy.errors.InvalidInput: a malformed value.
        """

    def remove(accountId):
        """
        @raise mdpy.errors.NotFound: no such account.
        """


# --- directory --------------------------------------------------------------


class IDirectory(Interface):
    """
    Domains, users, aliases and credentials.  Addresses are normalised by
    L{mdpy.address.normalise}.  Changes made through one instance (say, by the
    C{mdpy} command) are seen by every other instance without a restart.
    All methods are synchronous.

    Every user has an account id, a text that is the identity of the account
    rather than of its address: given by L{addUser}, kept for the account's
    life (L{setPassword} and L{setEnabled} keep it), and never given to
    another account, also not to one added again under the address of a
    deleted one (or of a user of a deleted domain).  A login carries the id
    it was verified against (L{mdpy.auth.accounts.Account}), so that a session
    compares it with the user's id now and never reaches an account made
    after it logged in (L{mdpy.auth.accounts.AccountCheck}).
    """

    def listDomains():
        """@return: local domain names, sorted."""

    def addDomain(name):
        """@raise mdpy.errors.Exists, mdpy.errors.InvalidInput"""

    def removeDomain(name):
        """Remove a domain with its users and aliases. @raise NotFound"""

    def hasDomain(name):
        """@return: whether mail for this domain is delivered here."""

    def setCatchAll(domain, target):
        """
        Route mail for unknown local parts of C{domain} to the address
        C{target}; L{None} turns the catch-all off.
        """

    def listUsers(domain=None):
        """@return: user addresses, sorted."""

    def addUser(address, password):
        """@raise mdpy.errors.Exists, NotFound (no such domain), InvalidInput"""

    def removeUser(address):
        """@raise mdpy.errors.NotFound"""

    def setPassword(address, password):
        """@raise mdpy.errors.NotFound"""

    def setEnabled(address, enabled):
        """Keep the account but refuse (or take again) its mail."""

    def getUser(address):
        """
        @return: an L{mdpy.directory.User} (with its account id) or L{None}.
        """

    def listAliases():
        """@return: C{(alias, [targets])} pairs, sorted."""

    def addAlias(alias, targets):
        """
        Map an address of a local domain to one or more addresses (local or
        remote).  @raise Exists, NotFound (no such domain), InvalidInput
        """

    def removeAlias(alias):
        """@raise mdpy.errors.NotFound"""

    def resolve(address):
        """
        Expand aliases (recursively, loops cut) and the catch-all.

        @return: a L{mdpy.directory.Resolution}: the local accounts and remote
            addresses C{address} stands for.
        @raise mdpy.errors.NotFound: a local domain with no such user.
        @raise mdpy.errors.Disabled: the only target is a disabled account.
        """

    def setUserQuota(address, quota):
        """
        Set the limits of an account (an L{mdpy.quota.Quota}; L{None} or
        an empty one removes them, so its domain's apply).  An account's
        own quota replaces its domain's.

        @raise mdpy.errors.NotFound: no such user.
        @raise mdpy.errors.InvalidInput: a limit is not a positive number.
        """

    def setDomainQuota(domain, quota):
        """
        Set the limits of each account of C{domain} that has none of its
        own (an L{mdpy.quota.Quota}; L{None} removes them).

        @raise mdpy.errors.NotFound: no such domain.
        """

    def getUserQuota(address):
        """
        @return: the account's own L{mdpy.quota.Quota} (empty when none).
        @raise mdpy.errors.NotFound: no such user.
        """

    def getDomainQuota(domain):
        """
        @return: the domain's L{mdpy.quota.Quota} (empty when none).
        @raise mdpy.errors.NotFound: no such domain.
        """

    def getQuota(address):
        """
        @return: the L{mdpy.quota.Quota} that applies to the account: its
            own, else its domain's; an empty one for no limit or no such
            user.  Read for every local recipient: as cheap as L{resolve}.
        """

    def quotaWarned(address):
        """
        @return: whether the account was warned that it nears its quota
            and has not gone back below the mark since (L{mdpy.quota}).
        """

    def setQuotaWarned(address, warned):
        """
        Remember whether the account was warned (see L{quotaWarned}).
        """

    def getSecrets(address):
        """
        @return: the stored credential record of an enabled user as a L{dict}
            (C{"password"}: the hash string, C{"cram-md5"}: HMAC-MD5 contexts
            or L{None}, C{"account-id"}: the account id, read with them), or
            L{None} when there is no such enabled user.
        """


# --- outbound queue, collectors ---------------------------------------------


# The states of a recipient of a queued message (the C{state} of each of
# C{entry.recipients} of L{IOutboundQueue.list}): still to be delivered,
# delivered, failed (the sender is still to be told), and bounced (told).
PENDING = "pending"
SENT = "sent"
FAILED = "failed"
BOUNCED = "bounced"


class IOutboundQueue(IDeliveryTarget):
    """
    Durable spool for mail to remote recipients.  As a delivery target, its
    C{commit} means every queued copy is durably stored.  A domain on hold keeps its
    mail until released (ODMR's ATRN).
    """

    def list():
        """@return: queue entries, each with its id, sender and per-recipient state."""

    def flush():
        """Make every deferred message due now."""

    def remove(messageId):
        """@raise mdpy.errors.NotFound"""

    def inspect():
        """
        Read what is queued as it is stored, without taking part in
        delivery (C{mdpy queue list} while a server may be running).
        Synchronous.

        @return: C{(entries, held, unreadable)}: the entries oldest first,
            the domains on hold, and the names of stored entries that
            could not be read.
        """

    def discard(messageId):
        """
        Remove a stored message at once, without reporting to its sender:
        for C{mdpy queue del} when no server is delivering the queue.
        Synchronous.

        @raise mdpy.errors.NotFound: no such message.
        """

    def adopt(messageId):
        """
        Take up for delivery here a message another process stored (a
        server sharing the data directory, the C{mdpy} command); listeners
        hear of it as of one queued here.  Synchronous.

        @return: its entry, or L{None} when it is held already or gone.
        """

    def forget(entry):
        """
        Stop holding C{entry}: the process that runs the queue delivers it.
        Synchronous.
        """

    def pickUp(grace):
        """
        Take up the messages other processes stored that no L{adopt} named,
        once they are C{grace} seconds old.  Synchronous.

        @return: their entries.
        """

    def hold(domain):
        """Keep mail for C{domain} until L{release}."""

    def release(domain):
        """@return: the ids now due for C{domain}."""

    def stage(envelope, recipients, parts):
        """
        Put one message in the queue durably, but keep it from delivery until
        L{admit}; L{withdraw} takes it back instead.  A delivery that also
        stores local copies stages its queued ones first, so that a failure
        of either leaves nothing delivered (see L{mdpy.delivery.pipeline}).
        A staged message left by a crash is queued at the next start.

        @param envelope: an L{mdpy.envelope.Envelope}; its message id names
            the queued message.
        @param recipients: remote addresses.
        @param parts: the message, as bytes and readable files (read in
            order, possibly in a worker thread).
        @return: a L{Deferred} firing with the staged entry once it is on
            disk.
        """

    def admit(entry):
        """
        Hand a L{stage}d entry to delivery.  Synchronous.

        @return: C{entry}.
        """

    def withdraw(entry):
        """
        Remove a L{stage}d entry durably: it is never delivered.

        @return: a L{Deferred} firing once it is gone.
        """


class IDedupeCache(Interface):
    """
    Remembers, durably and for a time, which (key, recipient) pairs a
    collector delivered (C{key} a Message-ID or a content fingerprint), so
    that one message is never delivered twice to one person.  Pairs are
    added together with the UIDLs they came from (C{markDelivered}), in one
    transaction.
    """

    def isDuplicate(key, recipient, ttl=None):
        """
        @param ttl: when given, only a pair added less than this many seconds
            ago counts.
        @return: whether C{(key, recipient)} was added and not expired.
        """

    def markDelivered(uid, pairs=()):
        """
        Record the message C{uid} as delivered, and its C{(key, recipient)}
        C{pairs}; durable once returned.
        """

    def expire(ttl):
        """
        Forget the pairs added C{ttl} seconds ago or earlier.

        @return: how many were forgotten.
        """


class ICollectorStates(Interface):
    """
    What each collected source (a C{[domainpop:NAME]} mailbox, a MultiPOP
    account) remembers between runs: the state of each message on the
    server by UIDL and the dedupe cache, one L{IDedupeCache} per source,
    shared by the server and the C{mdpy domainpop run} command.
    """

    def stateOf(source):
        """
        @param source: C{domainpop/NAME} or C{multipop/ID}.
        @return: the source's state, made empty on first use: an
            L{IDedupeCache} that also keeps the UIDLs and held messages of
            the source (L{mdpy.backends.files.collectorstate.CollectorState}
            names the methods).  Its methods block (a database) and are
            thread-safe: the collector runs them through
            L{IBackend.runBlocking}, beside its own spool files.
            Synchronous.
        @raise ValueError: C{source} is not such a name.
        @raise mdpy.errors.TemporaryFailure: it cannot be opened.
        """


class IRecipientVerifier(Interface):
    """
    Says whether a recipient of a gateway domain exists before SMTP accepts
    it (L{mdpy.minger.client.MingerVerifier} asks the domain's own server
    over Minger; a subclass or another implementation may ask LDAP or read
    a file).
    """

    def verify(address):
        """
        @return: a L{Deferred} firing with L{None} to accept C{address}, or
            failing with a L{mdpy.errors.MailError} to refuse it
            (L{mdpy.errors.NotFound}: 550 5.1.1; L{mdpy.errors.Unavailable}:
            450 4.2.1; L{mdpy.errors.TemporaryFailure}: 451).
        """


# --- backends ---------------------------------------------------------------


class IBackend(Interface):
    """
    Everything persistent, or shared between the processes that serve one
    installation: the protocols and the delivery pipeline reach storage
    only through these, so one backend can be replaced by another (the
    files of one machine, memory for tests, a database shared by several
    machines) without touching them.  Chosen by C{[server] backend} and
    built by L{mdpy.backends.load}.  See "Threading" above for what runs
    where.
    """

    store = Attribute("The L{IMailStore}.")
    directory = Attribute("The L{IDirectory}.")
    queue = Attribute("The L{IOutboundQueue}.")
    changeFeed = Attribute("The L{IChangeFeed} of C{store}.")
    maildropLocks = Attribute("The L{IMaildropLocks} of every POP3 listener.")
    loginFailures = Attribute("The L{ILoginFailures} of the login limits.")
    remoteAccounts = Attribute("The L{IRemoteAccounts} MultiPOP collects.")
    dedupe = Attribute("The L{ICollectorStates} of DomainPOP and MultiPOP.")

    def start():
        """
        Called once by the server that runs the queue of its data (the
        primary, see L{mdpy.tap.PrimaryDuties}), before it serves or when it
        takes over: tidy what a crash left.
        """

    def runBlocking(f, *args, **kwargs):
        """
        Run blocking or CPU-heavy work that is not storage (password
        hashing, DKIM body hashes, a collector's state file) where the
        backend runs its own: the files backend's thread pool; at once in
        the memory backend.

        @return: a L{Deferred} firing with C{f(*args, **kwargs)}.
        """

    def close():
        """
        Release what the backend holds (thread pool, open files).

        @return: a L{Deferred} firing when done, or L{None}.
        """
