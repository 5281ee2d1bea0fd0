"""
Mailbox storage: the Maildir++ store and an in-memory store for tests.
"""
