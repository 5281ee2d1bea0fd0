"""
Mail authentication: SPF (RFC 7208), DKIM (RFC 6376), the Sender Rewriting
Scheme and the Authentication-Results header field (RFC 8601).
"""
