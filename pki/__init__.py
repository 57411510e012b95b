"""National health PKI: HSM-backed CA, revocation services and card middleware."""

__version__ = "0.1.0"
