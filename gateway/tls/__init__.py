"""TLS for the gateway: :mod:`gateway.tls.server` terminates TLS on listeners (SNI,
ALPN, client certificates, the ``$ssl_*`` values), :mod:`gateway.tls.client` speaks
TLS to upstream peers.

Nothing is re-exported here: the configuration loader imports
``gateway.tls._files`` to check certificate files, and importing the server module
from this package would import the HTTP routing (and with it the configuration
package) in the middle of loading it.
"""
