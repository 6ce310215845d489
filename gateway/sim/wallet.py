"""``lanecore sim wallet``: the shopper's wallet app of seed 001, simulated.

It downloads the customer's coupons from the coupon gateway (``wallet.coupons``),
makes a single-use payment token (a WeChat- or Alipay-style payment code the
provider simulators accept) and shows one multi-information QR holding the token
and the coupons, signed with the wallet provider's Ed25519 key
(``DATA_DIR/keys/order_signing.key``, made on first use). The coupon gateway
trusts the key under ``[wallet_keys]`` in its ``coupons.toml``: ``--print-key``
prints the line to put there.

A coupon gateway started with ``--curve`` takes only enrolled keys: give its public
key (``--server-key D/keys/server.key``) and the wallet's keypair (``--key
NAME.key_secret``, enrolled with a role that may call ``wallet.coupons``).

Output: one JSON line ``{key_id, public_key, customer, token_kind, coupons, mqr,
png?, svg?}`` (the token is inside the QR only), and with ``--show`` the QR drawn
on the terminal.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from lanecore.core.errors import LanecoreError
from lanecore.core.promo.mqr import make_mqr
from lanecore.core.store.orderqr import Signer, qr_png, qr_svg, qr_terminal

#: Payment codes the provider simulators accept, by wallet kind (core/pay/routing.py).
TOKEN_PREFIX = {"wechat": ("13", 18), "alipay": ("28", 16)}


def make_token(kind: str = "wechat") -> str:
    prefix, length = TOKEN_PREFIX[kind]
    return prefix + "".join(secrets.choice("0123456789") for _ in range(length - 2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lanecore sim wallet", description=__doc__.split("\n\n")[0])
    p.add_argument("--coupons", metavar="ENDPOINT",
                   help="the coupon gateway (lanecore gateway coupons) to download from")
    p.add_argument("--customer", metavar="ID", help="the wallet's customer id")
    p.add_argument("--server-key", metavar="FILE",
                   help="the coupon gateway's public key (server.key), when it runs --curve")
    p.add_argument("--key", metavar="FILE",
                   help="this wallet's enrolled keypair (NAME.key_secret), with --server-key")
    p.add_argument("--data-dir", metavar="D", default=".",
                   help="where the wallet provider's key lives (default: .)")
    p.add_argument("--key-id", default="w1", help="the key id in the QR (default w1)")
    p.add_argument("--currency", default="CNY", help="ISO 4217 code (default CNY)")
    p.add_argument("--kind", choices=sorted(TOKEN_PREFIX), default="wechat",
                   help="the payment token's style (default wechat)")
    p.add_argument("--token", help="this payment token instead of a fresh one (digits)")
    p.add_argument("--ttl-s", type=int, default=120, help="the QR's life (default 120 s)")
    p.add_argument("--only", metavar="ID,ID", help="put only these coupons in the QR")
    p.add_argument("--png", metavar="FILE", help="also draw the QR to a PNG file")
    p.add_argument("--svg", metavar="FILE", help="also draw the QR to an SVG file")
    p.add_argument("--show", action="store_true", help="draw the QR on the terminal")
    p.add_argument("--print-key", action="store_true",
                   help="print the key id and public key (for coupons.toml) and stop")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        signer = Signer.load_or_create(args.data_dir)
        key = {"key_id": args.key_id, "public_key": signer.public_key_b64()}
        if args.print_key:
            print(json.dumps({**key, "toml": f'{args.key_id} = "{key["public_key"]}"'}))
            return 0
        if not (args.coupons and args.customer):
            print("lanecore: USAGE: give --coupons ENDPOINT and --customer ID (or "
                  "--print-key)", file=sys.stderr)
            return 2
        from lanecore.gateway.net.client import Client, CurveKeys
        if bool(args.server_key) != bool(args.key):
            print("lanecore: USAGE: give both --server-key and --key (a --curve coupon "
                  "gateway), or neither", file=sys.stderr)
            return 2
        curve = CurveKeys.from_files(args.server_key, args.key) if args.key else None
        with Client(args.coupons, timeout_s=5.0, retries=2, curve=curve) as c:
            wallet = c.call("wallet.coupons", customer_id=args.customer)["coupons"]
        only = set(args.only.split(",")) if args.only else None
        coupons = [w for w in wallet if w.get("gtin") and w.get("amount_minor")
                   and (only is None or w["coupon_id"] in only)]
        text = make_mqr(signer, key_id=args.key_id, issuer="lanecore-wallet-sim",
                        customer=args.customer, token=args.token or make_token(args.kind),
                        currency=args.currency, ttl_s=args.ttl_s,
                        coupons=[(w["coupon_id"], w["gtin"], w["amount_minor"])
                                 for w in coupons])
        out = {**key, "customer": args.customer, "token_kind": args.kind,
               "coupons": [{k: w[k] for k in ("coupon_id", "gtin", "amount_minor")}
                           for w in coupons], "mqr": text}
        if args.png:
            out["png"] = str(qr_png(text, args.png))
        if args.svg:
            out["svg"] = str(qr_svg(text, args.svg))
        print(json.dumps(out), flush=True)
        if args.show:
            print(qr_terminal(text))
        return 0
    except LanecoreError as exc:
        print(f"lanecore: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
