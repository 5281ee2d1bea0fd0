"""ODMR (RFC 2645): the provider on port 366 and the customer."""
