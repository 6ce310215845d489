"""Promotions: the pricing engine (``pricing``), GS1 coupons and the coupon book
(``coupons``), the wallet's signed multi-information QR (``mqr``) and members with
tiers, points and history (``members``).

May import: ``lanecore.ext`` and ``core``'s shared files — no other domain.
"""
