"""homemesh: pool untrusted home computers into one cross-checked compute mesh."""

PROTOCOL_VERSION = 2  # 2: rate cards in peer records, a typed `work` in results
__version__ = "0.1.0"
