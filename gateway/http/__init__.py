"""HTTP: server protocols, exchanges, routing, the upstream client and the proxy handler."""
