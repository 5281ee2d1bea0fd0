# -*- test-case-name: tests.test_quota -*-
"""
Account quotas, as MDaemon sets them: a limit on the octets and one on the
number of messages an account may keep, over all its folders.

The limits are kept in the directory (L{mdpy.interfaces.IDirectory.getQuota}):
an account's own, else its domain's, which is the limit of each account of
the domain that has none of its own.  What an account holds is counted by
the store (L{mdpy.interfaces.IMailStore.usage}).  L{QuotaPolicy} puts the
two together for every path into a mailbox: the local delivery target
(SMTP, DomainPOP, MultiPOP, ODMR), IMAP APPEND, COPY and MOVE, and Minger.

An account at or over a limit takes no new message; one under both takes a
message that fits.  SMTP checks at RCPT, with the size the client declared
(RFC 1870), and again at the end of DATA.  There, one reply speaks for
every recipient of the message: it is refused (452 4.2.2, or 552 5.2.2
when larger than the whole quota) only when it fits the quota of none of
its local accounts; when it fits one, every account takes it, those it
puts over their quota included (as Dovecot's C{quota_grace} lets a
message through), since refusing would refuse the others too, and
accepting while dropping a copy would lose a message answered with 250.
The accounts over their quota then refuse the next message at RCPT.

When a delivery brings an account to L{QuotaPolicy.warnPercent} of a limit,
the postmaster writes to it once; the warning is sent again only after the
account went back below that mark.
"""

from email.utils import formatdate

from twisted.internet import defer

from mdpy import config, errors
from mdpy.envelope import newMessageId
from mdpy.logs import Logger

log = Logger()

WARN_PERCENT = 90

_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
_NONE = ("none", "unlimited", "off")


class Quota:
    """
    The limits of an account: L{None} for no limit.

    @ivar storage: the octets it may keep.
    @type storage: L{int} or L{None}
    @ivar messages: the messages it may keep.
    @type messages: L{int} or L{None}
    """

    def __init__(self, storage=None, messages=None):
        self.storage = storage
        self.messages = messages

    def __bool__(self):
        return self.storage is not None or self.messages is not None

    def __eq__(self, other):
        if not isinstance(other, Quota):
            return NotImplemented
        return (self.storage, self.messages) == (other.storage, other.messages)

    def __hash__(self):
        return hash((self.storage, self.messages))

    def __repr__(self):
        return "<Quota storage=%r messages=%r>" % (self.storage, self.messages)

    def describe(self):
        """
        @return: the limits for people, e.g. C{"2G, 10000 messages"}.
        """
        if not self:
            return "no limit"
        parts = []
        if self.storage is not None:
            parts.append(formatSize(self.storage))
        if self.messages is not None:
            parts.append("%d messages" % (self.messages,))
        return ", ".join(parts)


class Usage:
    """
    What an account keeps, over all its folders.

    @ivar storage: its messages' octets, as stored.
    @ivar messages: how many messages.
    """

    def __init__(self, storage=0, messages=0):
        self.storage = storage
        self.messages = messages

    def __eq__(self, other):
        if not isinstance(other, Usage):
            return NotImplemented
        return (self.storage, self.messages) == (other.storage, other.messages)

    def __hash__(self):
        return hash((self.storage, self.messages))

    def __repr__(self):
        return "<Usage storage=%r messages=%r>" % (self.storage, self.messages)


def parseSize(text):
    """
    Read a size as people write it: C{500M}, C{2G}, C{1048576} (octets);
    units are powers of 1024 (L{mdpy.config.parseSize}).  C{none} is no
    limit.

    @return: the octets, or L{None} for C{none}.
    @raise mdpy.errors.InvalidInput: anything else.
    """
    text = text.strip()
    if text.lower() in _NONE:
        return None
    try:
        octets = config.parseSize(text)
    except ValueError:
        raise errors.InvalidInput("not a size: '%s' (write e.g. 500M, 2G, 1048576, or none)" % (text,))
    if octets <= 0:
        raise errors.InvalidInput("a quota must be more than nothing: '%s' (or none)" % (text,))
    return octets


def parseCount(text):
    """
    @return: a message count C{text} gives, or L{None} for C{none}.
    @raise mdpy.errors.InvalidInput: not a positive whole number nor C{none}.
    """
    text = text.strip()
    if text.lower() in _NONE:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise errors.InvalidInput("not a number of messages: '%s' (or none)" % (text,))
    return int(text)


def formatSize(octets):
    """
    @return: C{octets} for people, in the largest unit that divides them
        (C{2G}, C{500M}, C{1536K}), else with one decimal (C{1.3M}).
    """
    for unit in ("G", "M", "K"):
        size = _UNITS[unit]
        if octets >= size and octets % size == 0:
            return "%d%s" % (octets // size, unit)
    for unit in ("G", "M", "K"):
        if octets >= _UNITS[unit]:
            return "%.1f%s" % (octets / _UNITS[unit], unit)
    return "%d" % (octets,)


def _percent(used, limit):
    return 100 * used // limit if limit else 0


class QuotaPolicy:
    """
    The quotas of the directory's accounts, held against what the store
    counts.

    Checks are made only for an account that has a limit: one without costs
    one directory lookup.

    @ivar directory: the L{mdpy.interfaces.IDirectory} holding the limits.
    @ivar store: the L{mdpy.interfaces.IMailStore} counting what accounts
        hold.
    @ivar postmaster: the address the warnings come from.
    @ivar warnPercent: the share of a limit at which an account is warned.
    """

    def __init__(self, directory, store, postmaster, warnPercent=WARN_PERCENT):
        self.directory = directory
        self.store = store
        self.postmaster = postmaster
        self.warnPercent = warnPercent

    def limitsOf(self, account):
        """
        @return: the L{Quota} of C{account} (its own, else its domain's);
            false when it has none.  Synchronous.
        """
        return self.directory.getQuota(account)

    def usageOf(self, account):
        """
        @return: a L{Deferred} firing with the L{Usage} of C{account}.
        """
        return defer.maybeDeferred(self.store.usage, account)

    def state(self, account):
        """
        @return: a L{Deferred} firing with C{(quota, usage)} of
            C{account}; C{usage} is L{None} when it has no quota (nothing
            was counted).
        """
        return defer.ensureDeferred(self._state(account))

    async def _state(self, account):
        quota = self.limitsOf(account)
        if not quota:
            return quota, None
        return quota, await self.usageOf(account)

    def check(self, account, size=None, count=1):
        """
        Refuse C{count} new messages of C{size} octets in all for C{account}
        when they do not fit its quota.

        @param size: the octets, or L{None} when not known yet (SMTP RCPT
            without C{SIZE=}): then only an account already at a limit is
            refused.
        @return: a L{Deferred} firing with L{None} when they fit.
        @raise mdpy.errors.QuotaExceeded: they do not fit now.
        @raise mdpy.errors.LargerThanQuota: C{size} alone is more than the
            account may ever keep.
        """
        return defer.ensureDeferred(self._check(account, size, count))

    async def _check(self, account, size, count):
        quota, usage = await self.state(account)
        if usage is None:
            return
        if quota.storage is not None and size is not None and size > quota.storage:
            raise errors.LargerThanQuota(
                "%s: a message of %d octets is larger than the quota (%s)"
                % (account, size, formatSize(quota.storage)))
        full = self._full(quota, usage, size or 0, count - 1)
        if full:
            raise errors.QuotaExceeded("%s is over its quota (%s)" % (account, full))

    @staticmethod
    def _full(quota, usage, size, more):
        """
        @return: what C{size} octets and C{more} + 1 messages would take
            C{usage} past, for people; or C{""} when nothing.
        """
        if quota.storage is not None and (usage.storage >= quota.storage
                                          or usage.storage + size > quota.storage):
            return "%s of %s used" % (formatSize(usage.storage), formatSize(quota.storage))
        if quota.messages is not None and usage.messages + more >= quota.messages:
            return "%d of %d messages" % (usage.messages, quota.messages)
        return ""

    def isFull(self, account):
        """
        @return: a L{Deferred} firing with whether C{account} is at or over
            a limit (Minger's answer 4).
        """
        def ebFull(failure):
            failure.trap(errors.QuotaExceeded)
            return True

        return self.check(account).addCallbacks(lambda _: False, ebFull)

    def delivered(self, accounts):
        """
        Warn each of C{accounts}, which were just given messages, that
        crossed L{warnPercent} of a limit; forget the warning of those back
        below it.  Failures are logged, never raised.

        @return: a L{Deferred} firing when done.
        """
        return defer.ensureDeferred(self._delivered(accounts))

    async def _delivered(self, accounts):
        for account in accounts:
            try:
                await self._warnIfNeeded(account)
            except Exception:
                log.failure("quota: could not check {account} for a warning", account=account)

    async def _warnIfNeeded(self, account):
        if not self.warnPercent:
            return
        quota, usage = await self.state(account)
        if usage is None:
            return
        percent = max(_percent(usage.storage, quota.storage or 0),
                      _percent(usage.messages, quota.messages or 0))
        warned = self.directory.quotaWarned(account)
        if percent < self.warnPercent:
            if warned:
                self.directory.setQuotaWarned(account, False)
            return
        if warned:
            return
        # Marked first: a second delivery finishing meanwhile does not
        # send a second warning.
        self.directory.setQuotaWarned(account, True)
        await defer.maybeDeferred(
            self.store.deliver, [(account, "INBOX", [self.warning(account, quota, usage, percent)])])
        log.info("quota: warned {account}: {percent}% of its quota used", account=account,
                 percent=percent)

    def warning(self, account, quota, usage, percent):
        """
        @return: the warning message for C{account}, as octets.
        """
        lines = [
            "From: Postmaster <%s>" % (self.postmaster,),
            "To: <%s>" % (account,),
            "Subject: Your mailbox is %d%% full" % (percent,),
            "Date: %s" % (formatdate(localtime=True),),
            "Message-ID: <%s@%s>" % (newMessageId(), self.postmaster.rpartition("@")[2]),
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "",
            "Your mailbox %s uses %d%% of its quota:" % (account, percent),
            "",
        ]
        if quota.storage is not None:
            lines.append("  storage: %s of %s" % (formatSize(usage.storage), formatSize(quota.storage)))
        if quota.messages is not None:
            lines.append("  messages: %d of %d" % (usage.messages, quota.messages))
        lines += [
            "",
            "When it is full, new mail for you is refused until you delete some.",
            "",
        ]
        return "\r\n".join(lines).encode("utf-8")
