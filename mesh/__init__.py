"""homemesh: pool untrusted home computers into one cross-checked compute mesh."""

PROTOCOL_VERSION = 1
__version__ = "0.1.0"
