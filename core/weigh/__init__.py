"""Weighing: a lane's weighing configuration (``laneconfig``), the weigh-check verdict
with its ranked explanations (``verify``) and per-SKU weight learning with scale drift
alarms (``learning``).

May import: ``core.scan`` (the catalogue's weights), ``lanecore.ext`` and ``core``'s
shared files — not ``pay``, ``promo`` or ``store``.
"""
