"""
MultiPOP: each user's own remote POP3 accounts, collected into their INBOX.
"""
