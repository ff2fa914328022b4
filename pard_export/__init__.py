"""pard-export: ahead-of-time export of PARD speculative decoding (draft + target) and a slim runtime."""

__version__ = "0.1.0"
