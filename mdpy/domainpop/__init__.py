"""DomainPOP and MultiPOP: collecting mail from POP3 mailboxes at an ISP."""
