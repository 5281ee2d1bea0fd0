# -*- test-case-name: tests.test_tap -*-
"""
The layout of a data directory, shared by the server and the C{mdpy} command
so that both find the same files.  The mail, the directory database, the
queue, the locks, the failed logins, the MultiPOP accounts and the sources'
state files are the files backend's (L{mdpy.backends.files}); the other
files are the server's own.

    data_dir/
      directory.sqlite      domains, users, aliases, credentials
      mail/<domain>/<localpart>/   Maildir++ of each account
      deleted/<UTC time>/<domain>/[<localpart>/]   mail of deleted accounts and domains
      spool/                bodies of large messages being received
      spool/imap/           IMAP APPEND messages being received (unnamed files)
      queue/                the outbound queue (see L{mdpy.backends.files.queue})
      locks/                the POP3 maildrop locks (L{mdpy.backends.files.locks})
      logins.sqlite         the failed logins the login limits count
      multipop/accounts.json   the MultiPOP accounts (0600)
      domainpop/NAME/, multipop/ID/   each collected source's state.sqlite,
                            lock, spool and held messages
      dkim/                 DKIM signing keys (see L{mdpy.mailauth.dkim})
      srs.secret            the key of SRS addresses (0600)
      tls/cert.pem key.pem  the self-signed certificate, when none is set
      postmaster.password   the generated password of the first account (0600)
"""

import os
import secrets

from twisted.internet import defer

from mdpy.address import normalise
from mdpy.directory import addRoleAliases
from mdpy.errors import Exists
from mdpy.durable import writeFileAtomically
from mdpy.logs import Logger

_log = Logger()


class DataDir:
    """
    @ivar root: the data directory.
    """

    def __init__(self, root):
        self.root = root
        self.directoryPath = os.path.join(root, "directory.sqlite")
        self.mailRoot = os.path.join(root, "mail")
        self.spoolDir = os.path.join(root, "spool")
        self.literalSpoolDir = os.path.join(self.spoolDir, "imap")
        self.tlsDir = os.path.join(root, "tls")
        self.queueDir = os.path.join(root, "queue")
        self.srsSecretPath = os.path.join(root, "srs.secret")
        self.dkimDir = os.path.join(root, "dkim")
        self.postmasterPasswordPath = os.path.join(root, "postmaster.password")
        self.deletedDir = os.path.join(root, "deleted")
        # The running server's control socket (see
        # mdpy.control), beside the queue it controls.
        self.controlSocketPath = os.path.join(self.queueDir, "control.sock")

    def prepare(self):
        """
        Create the server's folders, private to its user (the files
        backend makes its own).
        """
        for path in (self.root, self.spoolDir, self.literalSpoolDir):
            os.makedirs(path, mode=0o700, exist_ok=True)

    def firstStart(self, directory, store, domain):
        """
        Until the postmaster password file exists: make sure the server's
        C{domain} exists, with its postmaster account (a generated password,
        written to L{postmasterPasswordPath}) and its other role addresses as
        aliases of it (L{addRoleAliases}).  Domains added with C{mdpy domain
        add} before this start do not stop it; a user or an alias
        C{postmaster@domain} made by the administrator is kept.

        @return: C{(address, password, aliases)}: the account made (its
            address and password L{None} when none was), and the aliases
            made, C{(alias, target)} each.
        """
        address = normalise("postmaster@" + domain)
        if os.path.exists(self.postmasterPasswordPath):
            return None, None, []
        if not directory.hasDomain(domain):
            directory.addDomain(domain)
        password = secrets.token_urlsafe(12)
        try:
            directory.addUser(address, password)
        except Exists:
            password = None  # the administrator's own postmaster
        else:
            # The server is not serving yet: a backend does this at once.
            defer.maybeDeferred(store.createAccount, address).addErrback(
                lambda failure: _log.failure("cannot make the mailbox of {address}", failure, address=address)
            )
            writeFileAtomically(
                self.postmasterPasswordPath, ("%s %s\n" % (address, password)).encode(), 0o600
            )
        aliases = addRoleAliases(directory, domain, address)
        return (address if password else None), password, aliases
