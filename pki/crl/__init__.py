"""Revocation publication: full, delta and partitioned CRLs, signed in the HSM, served from memory.

``der`` and ``builder`` encode and sign; ``source`` reads the store; ``publisher`` decides numbers,
scope and times and persists; ``cache`` and ``http`` serve the latest bytes; ``cli`` is the
``cps-admin crl`` group.
"""
