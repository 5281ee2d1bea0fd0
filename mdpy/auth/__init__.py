# -*- test-case-name: tests.test_checkers -*-
"""
Authentication: password hashing (L{mdpy.auth.passwords}) and the
C{twisted.cred} checker, realm and portal every protocol shares
(L{mdpy.auth.checkers}).
"""

from zope.interface import Interface


class IAccount(Interface):
    """
    Marker for the avatar of a logged-in mail account.  The avatar is the
    account's normalised address (a L{str}; for a directory account an
    L{mdpy.auth.accounts.Account}, which also names the account it logged in
    to); each protocol adapts it to what it serves (a POP3 maildrop, an IMAP
    account, an SMTP sender identity).
    """
