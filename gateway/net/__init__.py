"""What every lanecore process and client shares: ``server`` (``OpServer``: the ROUTER
loop, envelopes, recorded replies), ``protocol`` (bounded MessagePack, field checks,
error codes), ``client`` (``Client`` and ``AsyncClient``), ``security`` (CurveZMQ keys
and the ZAP authenticator), ``broker`` (``--workers N``) and ``auth`` (the terminals'
HMAC request frames).

May import: ``core``'s shared files (errors) only — no process, no domain.
"""
