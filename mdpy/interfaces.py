# -*- test-case-name: tests.test_interfaces -*-
"""
The seams of mdpy.

Everything a protocol needs from storage, and everything a storage needs from
the outside, is said here once.  Implementations declare C{@implementer(...)}
and refer to these docstrings instead of repeating them.  None of these
interfaces knows of SMTP, POP3 or IMAP: protocols adapt them.

Any method documented as returning a value may instead return a L{Deferred}
firing with that value, unless it says "synchronous".  Failures are the
protocol-neutral exceptions of L{mdpy.errors}.
"""

from zope.interface import Attribute, Interface


# --- delivery ---------------------------------------------------------------


class IDeliveryTarget(Interface):
    """
    Something mail can be handed to: the pipeline, the local store, the
    outbound queue.  Targets nest: the pipeline routes each recipient to
    another target.
    """

    def startDelivery(envelope):
        """
        Begin one transaction.

        @param envelope: the sender and session facts.
        @type envelope: L{mdpy.envelope.Envelope}
        @return: an L{IDelivery}.
        @raise mdpy.errors.MailError: the sender is refused.
        """


class IDelivery(Interface):
    """
    One transaction: recipients are added, the body is written, then it is
    committed or aborted.

    Invariants: C{commit} fires only after every copy is durably on disk (file
    and directory fsynced); if it fails, no copy is visible to readers.  After
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
            position to the end) whose concatenation is the message.
        @param key: L{None}, or C{(seconds, text)} naming this delivery for
            good (a collected message: when it was first seen, and where
            from).  With C{again} (the delivery may have been committed
            before a crash), a copy of the same key, account and folder that
            is in its folder already, read or not, is not stored twice.
        @return: L{None} once every copy is in its folder's C{new/}, each file
            and directory fsynced.  On failure nothing is visible and nothing
            is left in C{tmp/}.
        @raise mdpy.errors.NotFound: an account or folder does not exist.
        @raise mdpy.errors.TemporaryFailure: an I/O error (disk full, fsync).
        """

    def deleteAccount(address):
        """
        Remove the account's mail.
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
        Create a folder.  @raise mdpy.errors.Exists: it exists.
        """

    def deleteMailbox(address, name):
        """
        Delete a folder and its messages.
        """

    def renameMailbox(address, old, new):
        """
        Rename a folder (and its children).
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
        @return: an L{IMailbox}, synchronised with what is on disk.
        @raise mdpy.errors.NotFound: no such account or folder.
        """

    def addListener(address, listener):
        """
        Call C{listener(address, mailboxName)} after anything changes in a
        folder of that account (new mail, flags, expunge), whichever protocol
        or process made the change.  Synchronous.
        """

    def removeListener(address, listener):
        """
        Undo L{addListener}.  Synchronous.
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

    def sync():
        """
        Take in what changed on disk since the last call (new files from any
        source, flags changed or files removed by another program).

        @return: L{None}.
        """

    def messages():
        """
        @return: the L{IStoredMessage}s present after the last L{sync}, in UID
            order.  Synchronous.
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

    def setFlags(uid, flags):
        """
        Replace the flags of a message; raises the modification sequence.

        @return: the message's new modification sequence.
        @raise mdpy.errors.NotFound: no such UID.
        """

    def expunge(uids):
        """
        Remove the messages with these UIDs, durably.

        @return: the UIDs that were removed.
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
        " life (the Maildir base name); POP3 UIDLs come from it."
    )
    flags = Attribute("L{frozenset} of L{str}")
    size = Attribute("L{int}: octets of the stored message (CRLF line endings).")
    internalDate = Attribute("L{float}: seconds since the epoch.")
    modSeq = Attribute("L{int}: modification sequence of the last change.")

    def open():
        """
        @return: a binary file positioned at the start of the message.
            Synchronous.
        @raise mdpy.errors.NotFound: the message was removed meanwhile.
        """


# --- directory --------------------------------------------------------------


class IDirectory(Interface):
    """
    Domains, users, aliases and credentials.  Addresses are normalised by
    L{mdpy.address.normalise}.  Changes made through one instance (say, by the
    C{mdpy} command) are seen by every other instance without a restart.
    All methods are synchronous.
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
        @return: an L{mdpy.directory.User} or L{None}.
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

    def getSecrets(address):
        """
        @return: the stored credential record of an enabled user as a L{dict}
            (C{"password"}: the hash string, C{"cram-md5"}: HMAC-MD5 contexts
            or L{None}), or L{None} when there is no such enabled user.
        """


# --- later services ---------------------------------------------------------


class IOutboundQueue(IDeliveryTarget):
    """
    Durable spool for mail to remote recipients.  As a delivery target, its
    C{commit} means every queued copy is on disk.  A domain on hold keeps its
    mail until released (ODMR's ATRN).
    """

    def list():
        """@return: queue entries, each with its id, sender and per-recipient state."""

    def flush():
        """Make every deferred message due now."""

    def remove(messageId):
        """@raise mdpy.errors.NotFound"""

    def hold(domain):
        """Keep mail for C{domain} until L{release}."""

    def release(domain):
        """@return: the ids now due for C{domain}."""


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
