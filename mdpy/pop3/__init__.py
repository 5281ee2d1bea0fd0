"""
POP3: the server of ports 110 and 995 (and, later, the client DomainPOP and
MultiPOP share).
"""
