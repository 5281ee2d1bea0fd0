"""DomainPOP: collecting the mail of a whole domain from one POP3 mailbox at an ISP."""
