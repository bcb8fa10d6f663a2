"""Sluice, the gateway: `build_app(config)` and the `Forwarder` it ends in."""

from proxy.app import build_app
from proxy.forwarder import Forwarder, ForwarderOptions

__all__ = ["Forwarder", "ForwarderOptions", "build_app"]
