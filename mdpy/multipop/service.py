# -*- test-case-name: tests.test_domainpop_service -*-
"""
MultiPOP: the remote POP3 accounts users have (C{mdpy multipop add}),
collected on an interval into each user's INBOX with the same POP3 client,
UIDL state and never-lose rules as DomainPOP (L{mdpy.domainpop.service}).

The accounts live in C{data_dir/multipop/accounts.json} (mode 0600: the
remote passwords must be sent as they are, so they cannot be hashed).  The
service reads the file at every interval, so an account added or removed
while the server runs is taken into account at the next collection.
"""

import json
import os
import secrets

from twisted.application import service
from twisted.internet import defer

from mdpy import errors
from mdpy.address import normalise
from mdpy.durable import writeFileAtomically
from mdpy.logs import Logger

log = Logger()

TLS_MODES = ("starttls", "implicit", "none")


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
            raise errors.TemporaryFailure("%s: unreadable: %s" % (self.path, e))
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


class MultiPOPService(service.Service):
    """
    Collects every account of a L{MultiPOPAccounts} each C{interval}
    seconds, one after the other.

    @ivar makeCollector: C{makeCollector(account)} returning the
        L{mdpy.domainpop.service.Collector} of one account dict.
    """

    def __init__(self, accounts, makeCollector, interval, clock=None, firstDelay=5):
        if clock is None:
            from twisted.internet import reactor as clock
        self.accounts = accounts
        self.makeCollector = makeCollector
        self.interval = interval
        self.clock = clock
        self.firstDelay = firstDelay
        self._collectors = {}
        self._call = None
        self._current = None

    def startService(self):
        service.Service.startService(self)
        self._call = self.clock.callLater(self.firstDelay, self._run)

    def _collectorFor(self, account):
        key = json.dumps(account, sort_keys=True)
        collector = self._collectors.get(account["id"])
        if collector is None or collector.accountKey != key:
            collector = self.makeCollector(account)
            collector.accountKey = key
            self._collectors[account["id"]] = collector
        return collector

    def runNow(self):
        """
        Collect every account now.

        @return: a L{Deferred} firing with the list of
            L{mdpy.domainpop.service.CycleReport}.
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

    def _run(self):
        self._call = None
        d = self._current = self.runNow()

        def again(_):
            self._current = None
            if self.running:
                self._call = self.clock.callLater(self.interval, self._run)

        d.addBoth(again)

    def stopService(self):
        service.Service.stopService(self)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        current = self._current

        def close(_=None):
            for collector in self._collectors.values():
                collector.close()

        if current is None:
            close()
            return None
        return current.addBoth(close)
