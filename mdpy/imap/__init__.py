"""
The IMAP4rev1 server of ports 143 (STARTTLS) and 993 (implicit TLS): its
command parser, the MIME structure of messages, FETCH, SEARCH and the
session with its selected-mailbox view.
"""
