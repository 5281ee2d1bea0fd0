"""
Internet messages whatever the protocol: header sections (RFC 5322), MIME
structure (RFC 2045, RFC 2046), address lists and the C{Received} trace
field.
"""
