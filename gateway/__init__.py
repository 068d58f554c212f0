"""gateway: a Twisted multiprotocol gateway with nginx upstream semantics."""
