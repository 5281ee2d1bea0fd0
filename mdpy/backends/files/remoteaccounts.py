# -*- test-case-name: tests.contract.test_contracts -*-
"""
The MultiPOP accounts of a data directory (L{mdpy.interfaces.IRemoteAccounts})
in C{data_dir/multipop/accounts.json}, mode 0600: the remote passwords
must be sent as they are, so they cannot be hashed.  Every change writes
the whole file again, atomically and durably, so a reader (the server at
its next interval) sees the old list or the new one.
"""

import json
import os

from mdpy import errors
from mdpy.backends.local import RemoteAccounts
from mdpy.durable import writeFileAtomically


class RemoteAccountsFile(RemoteAccounts):
    """
    See L{IRemoteAccounts} and the module docstring.

    @ivar path: the accounts file.
    """

    def __init__(self, path):
        RemoteAccounts.__init__(self)
        self.path = path

    def __repr__(self):
        return "<RemoteAccountsFile %r>" % (self.path,)

    def list(self):
        """
        See L{IRemoteAccounts.list}.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                accounts = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise errors.TemporaryFailure("%s: unreadable: %s" % (self.path, getattr(e, "strerror", None) or e))
        return [a for a in accounts if isinstance(a, dict) and "id" in a]

    def _save(self, accounts):
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        writeFileAtomically(self.path, json.dumps(accounts, indent=1).encode("utf-8"), mode=0o600)
