"""The store's journeys: baskets and their checks (``basket``), the signed order QR
(``orderqr``), the handheld fleet with its geofence (``handheld``), risk-based audits
(``audit``) and the unattended venue (``unattended``).

May import: every other domain (``scan``, ``weigh``, ``pay``, ``promo``),
``lanecore.ext`` and ``core``'s shared files. Nothing in ``core`` imports ``store``.
"""
