# -*- test-case-name: tests.test_imap_quota -*-
"""
The QUOTA extension (RFC 9208), a mixin of
L{mdpy.imap.server.IMAP4Server}: GETQUOTAROOT, GETQUOTA and SETQUOTA, and
the quota check of APPEND and COPY.

Each account has one quota root, L{ROOT}, over all its folders, holding the
limits the administrator set (L{mdpy.quota}): C{STORAGE} in units of 1024
octets (RFC 9208 section 5.1) and C{MESSAGE} (section 5.2).  An account
without limits has no quota root.  Quotas are set with the C{mdpy} command,
never over IMAP, so SETQUOTA is refused (and C{QUOTASET} not advertised).

A message that does not fit is refused with C{NO [OVERQUOTA]} (RFC 9208
section 4.3.1; RFC 5530).  STATUS gives C{DELETED} and C{DELETED-STORAGE}
(section 4.1.4; L{mdpy.imap.mailboxes}).  MOVE is not checked: the account keeps as much as
before.
"""

import os

from twisted.internet import defer
from twisted.python.failure import Failure

from mdpy.imap.mailboxes import decodeName, encodeName
from mdpy.imap.parser import ParseError, astring
from mdpy.imap.structure import quoteString

CAPABILITIES = (b"QUOTA", b"QUOTA=RES-STORAGE", b"QUOTA=RES-MESSAGE")

ROOT = "User quota"


def _kilobytes(octets, roundUp):
    return -(-octets // 1024) if roundUp else octets // 1024


def quotaResources(quota, usage):
    """
    @return: the resource list of a C{QUOTA} response (RFC 9208 section
        4.2.1) for L{mdpy.quota.Quota} C{quota} and L{mdpy.quota.Usage}
        C{usage}: use rounded up, limits down.
    """
    resources = []
    if quota.storage is not None:
        resources.append(b"STORAGE %d %d" % (_kilobytes(usage.storage, True),
                                             _kilobytes(quota.storage, False)))
    if quota.messages is not None:
        resources.append(b"MESSAGE %d %d" % (usage.messages, quota.messages))
    return b"(" + b" ".join(resources) + b")"


def dataSize(data):
    """
    @return: the octets of what L{mdpy.interfaces.IMailbox.appendMany}
        takes as a message: L{bytes}, a file (read from its position) or a
        list of those.
    """
    if isinstance(data, list):
        return sum(dataSize(part) for part in data)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    try:
        return os.fstat(data.fileno()).st_size - data.tell()
    except (AttributeError, OSError, ValueError):
        position = data.tell()
        end = data.seek(0, os.SEEK_END)
        data.seek(position)
        return end - position


class QuotaCommands:
    """
    GETQUOTAROOT, GETQUOTA and SETQUOTA of L{mdpy.imap.server.IMAP4Server};
    needs C{factory.quotas}, a L{mdpy.quota.QuotaPolicy} or L{None} (no
    quotas: the commands are not offered).
    """

    def quotaCapabilities(self):
        """
        @return: the capabilities of this mixin, none without quotas.
        """
        return CAPABILITIES if self.factory.quotas is not None else ()

    async def checkQuota(self, size, count=1):
        """
        Refuse C{count} messages of C{size} octets in all that do not fit
        the account's quota.

        @raise mdpy.errors.QuotaExceeded: they do not fit (C{NO
            [OVERQUOTA]}).
        """
        quotas = self.factory.quotas
        if quotas is not None:
            await quotas.check(str(self.account), size, count)

    def do_GETQUOTAROOT(self, tag, args):
        if self.factory.quotas is None:
            return self.bad(tag, b"Unknown command.")
        if len(args) != 1:
            raise ParseError("Expected a mailbox name")
        name = decodeName(args[0], self.utf8)
        return defer.ensureDeferred(self._getQuotaRoot(tag, name))

    async def _getQuotaRoot(self, tag, name):
        try:
            await self._storeCall(self.factory.store.openMailbox, name)
            quota, usage = await self.factory.quotas.state(str(self.account))
        except Exception:
            return self._noFromFailure(Failure(), tag)
        line = b"QUOTAROOT " + encodeName(name, self.utf8)
        if quota:
            line += b" " + quoteString(ROOT.encode("ascii"))
        self.untagged(line)
        if quota:
            self.untagged(b"QUOTA %s %s" % (quoteString(ROOT.encode("ascii")), quotaResources(quota, usage)))
        return self.complete(tag, b"OK", b"Getquotaroot completed.")

    def do_GETQUOTA(self, tag, args):
        if self.factory.quotas is None:
            return self.bad(tag, b"Unknown command.")
        if len(args) != 1:
            raise ParseError("Expected a quota root")
        return defer.ensureDeferred(self._getQuota(tag, astring(args[0])))

    async def _getQuota(self, tag, root):
        try:
            quota, usage = await self.factory.quotas.state(str(self.account))
        except Exception:
            return self._noFromFailure(Failure(), tag)
        if not quota or root != ROOT.encode("ascii"):
            return self.no(tag, b"No such quota root.", b"NONEXISTENT")
        self.untagged(b"QUOTA %s %s" % (quoteString(root), quotaResources(quota, usage)))
        return self.complete(tag, b"OK", b"Getquota completed.")

    def do_SETQUOTA(self, tag, args):
        if self.factory.quotas is None:
            return self.bad(tag, b"Unknown command.")
        if len(args) != 2 or not isinstance(args[1], list):
            raise ParseError("Expected a quota root and a resource list")
        # RFC 9208 section 4.1.3: only an administrator may set quotas;
        # here that is done with the mdpy command.
        return self.no(tag, b"Quotas are set by the administrator.", b"NOPERM")
