# -*- test-case-name: tests.test_accounts -*-
"""
The identity of a login, and the check that keeps a session to the account
it logged in to.

A session outlives changes the C{mdpy} command (another process) makes to
the directory: C{user del}, perhaps followed by C{user add} of the same
address (which makes another account, with its own account id, see
L{mdpy.interfaces.IDirectory}), C{domain del}, C{user disable}.  A login
therefore carries the account id its password was verified against
(L{Account}), and the session asks L{AccountCheck} before the commands that
reach the account's mail: a session whose account is gone, was made again
or is disabled ends (IMAP C{BYE}, POP3 C{-ERR [SYS/PERM]}, SMTP 421), as
Dovecot's C{doveadm kick} ends them, and never reaches the new account.
Nothing here knows how or where mail is stored.
"""

from mdpy.errors import Disabled, NotFound


class Account(str):
    """
    The avatar of a login to a directory account: its normalised address,
    which every protocol uses as it is, carrying the account id it was
    verified against.

    @ivar accountId: L{mdpy.directory.User.accountId} as read with the
        credentials the login was checked against, or L{None}.
    """

    def __new__(cls, address, accountId=None):
        self = str.__new__(cls, address)
        self.accountId = accountId
        return self


class AccountCheck:
    """
    Tells whether the account of a login is still the directory's account
    of that address, and enabled.  One lookup by primary key; a session
    may reuse an answer for up to L{maxAge} seconds for commands that touch
    only what it opened already (see
    L{mdpy.session.CommandSession.accountRemains}).

    @ivar directory: the L{mdpy.interfaces.IDirectory}.
    @ivar maxAge: seconds a session may go on from one answer.
    """

    def __init__(self, directory, maxAge=1.0):
        self.directory = directory
        self.maxAge = maxAge

    def check(self, account):
        """
        Ask the directory now.  Synchronous.

        @param account: the avatar of a login.  Only an L{Account} with an
            account id is checked; any other name (an ODMR gateway domain, or
            the avatar of another checker) passes.
        @raise mdpy.errors.NotFound: the user was deleted, or made again
            (another account id).
        @raise mdpy.errors.Disabled: the user is disabled.
        @raise mdpy.errors.TemporaryFailure: the directory cannot answer.
        """
        accountId = getattr(account, "accountId", None)
        if accountId is None:
            return
        user = self.directory.getUser(account)
        if user is None:
            raise NotFound("account %s was deleted" % (account,))
        if user.accountId != accountId:
            raise NotFound("account %s was deleted and made again" % (account,))
        if not user.enabled:
            raise Disabled("account %s is disabled" % (account,))
