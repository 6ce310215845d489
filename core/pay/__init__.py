"""Payments as a domain: the exactly-once ledger (``ledger``), channel routing with
limits and declines (``routing``), cash and optimal change (``cash``),
reconciliation against the providers' bills (``recon``), member stored value
(``storedvalue``), signed receipts (``receipt``), EMVCo merchant-presented QR
payloads (``emvqr``) and the per-source throttle of secret checks (``throttle``:
stored-value PINs here, the venue's logins in ``core/store``).

May import: ``core``'s shared files only — no other domain.
"""
