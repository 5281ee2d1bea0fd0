# -*- test-case-name: tests.test_domainpop_service -*-
"""
MultiPOP: the remote POP3 accounts users have (C{mdpy multipop add}),
collected on an interval into each user's INBOX with the same POP3 client,
UIDL state and never-lose rules as DomainPOP (L{mdpy.collect.collector}).

The accounts are the backend's (L{mdpy.interfaces.IRemoteAccounts}; the
files backend keeps them in C{data_dir/multipop/accounts.json}).  The
service reads them at every interval, so an account added or removed while
the server runs is taken into account at the next collection.
"""

import json

from twisted.internet import defer

from mdpy import errors
from mdpy.collect.periodic import PeriodicCollection
from mdpy.logs import Logger

log = Logger()


class MultiPOPService(PeriodicCollection):
    """
    Collects every account of an L{mdpy.interfaces.IRemoteAccounts}
    periodically, one after the other.

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
            accounts = await defer.maybeDeferred(self.accounts.list)
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
