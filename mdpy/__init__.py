"""
mdpy: an all-in-one mail server framework on Twisted.
"""

__version__ = "0.1.0"
