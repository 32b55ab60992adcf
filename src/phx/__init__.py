"""phx: the Phoenix homeserver protocol (federated MLS messaging), in Python."""

__version__ = "0.1.0"
