# -*- test-case-name: tests.test_domainpop_service -*-
"""
MultiPOP: the remote POP3 accounts users have (C{mdpy multipop add}),
collected on an interval into each user's INBOX with the same POP3 client,
UIDL state and never-lose rules as DomainPOP (L{mdpy.collect.collector}).

The accounts live in C{data_dir/multipop/accounts.json} (mode 0600: the
remote passwords must be sent as they are, so they cannot be hashed).  The
service reads the file at every interval, so an account added or removed
while the server runs is taken into account at the next collection.
"""

import json
import os
import secrets

from twisted.internet import defer

from mdpy import errors
from mdpy.address import normalise
from mdpy.collect.periodic import PeriodicCollection
from mdpy.durable import writeFileAtomically
from mdpy.logs import Logger
from mdpy.tls import TLS_MODES

log = Logger()


class MultiPOPAccounts:
    """
    The accounts file.  Each account is a dict: C{id}, C{user} (the local
    address), C{host}, C{port}, C{tls}, C{username}, C{password},
    C{leave_on_server_days}.
    """

    def __init__(self, path):
        self.path = path

    def list(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                accounts = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise errors.TemporaryFailure("%s: unreadable: %s" % (self.path, getattr(e, "strerror", None) or e))
        return [a for a in accounts if isinstance(a, dict) and "id" in a]

    def add(self, user, host, port=110, tls="starttls", username="", password="", leaveOnServerDays=0):
        """
        @return: the new account's id.
        @raise errors.InvalidInput: a malformed value.
        """
        user = normalise(user)
        if tls not in TLS_MODES:
            raise errors.InvalidInput("tls must be one of " + ", ".join(TLS_MODES))
        if not host or any(c in host for c in "\r\n\0 /"):
            raise errors.InvalidInput("bad host: %r" % (host,))
        if not 0 < int(port) < 65536:
            raise errors.InvalidInput("bad port: %r" % (port,))
        if int(leaveOnServerDays) < 0:
            raise errors.InvalidInput("leave_on_server_days must not be negative")
        accounts = self.list()
        account = dict(
            id=secrets.token_hex(4), user=user, host=host, port=int(port), tls=tls,
            username=username, password=password, leave_on_server_days=int(leaveOnServerDays),
        )
        accounts.append(account)
        self._save(accounts)
        return account["id"]

    def remove(self, accountId):
        accounts = self.list()
        kept = [a for a in accounts if a["id"] != accountId]
        if len(kept) == len(accounts):
            raise errors.NotFound("no such MultiPOP account: %s" % (accountId,))
        self._save(kept)

    def _save(self, accounts):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        writeFileAtomically(self.path, json.dumps(accounts, indent=1).encode("utf-8"), mode=0o600)


class MultiPOPService(PeriodicCollection):
    """
    Collects every account of a L{MultiPOPAccounts} periodically, one after
    the other.

    @ivar makeCollector: C{makeCollector(account)} returning the
        L{mdpy.collect.collector.Collector} of one account dict.
    """

    def __init__(self, accounts, makeCollector, interval, clock=None, firstDelay=5):
        PeriodicCollection.__init__(self, interval, clock, firstDelay)
        self.accounts = accounts
        self.makeCollector = makeCollector
        self._collectors = {}  # account id: (its settings as JSON, collector)

    def _collectorFor(self, account):
        settings = json.dumps(account, sort_keys=True)
        known = self._collectors.get(account["id"])
        if known is None or known[0] != settings:
            if known is not None:
                known[1].close()
            known = self._collectors[account["id"]] = (settings, self.makeCollector(account))
        return known[1]

    def runNow(self):
        """
        See L{PeriodicCollection.runNow}: every account, firing with the
        list of their L{mdpy.collect.collector.CycleReport}s.
        """
        return defer.ensureDeferred(self._all())

    async def _all(self):
        try:
            accounts = self.accounts.list()
        except errors.MailError as e:
            log.error("multipop: {why}", why=e.detail)
            return []
        reports = []
        for account in accounts:
            collector = self._collectorFor(account)
            try:
                reports.append(await collector.collect())
            except Exception as e:
                log.info("{name}: not collected: {why}", name=collector.name, why=e)
        return reports

    def close(self):
        for settings, collector in self._collectors.values():
            collector.close()
