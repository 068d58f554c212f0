"""twistd plugin: ``twistd -n gateway -c conf/site.toml``.

Only names the tap module, so ``twistd --help`` imports nothing heavy.
"""
from twisted.application.service import ServiceMaker

gateway = ServiceMaker(
    "gateway",
    "gateway.tap",
    "Multiprotocol gateway with nginx upstream semantics (TOML config).",
    "gateway",
)
