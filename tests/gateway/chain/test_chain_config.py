"""How a store names HQ: `[chain]` in lanecore.toml or `lanecore link`'s options, and
what the link refuses before it connects anywhere (docs/chain.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lanecore.core.config import ConfigError, parse_config
from lanecore.gateway.chain import streams as S


def test_the_chain_section_names_the_store_and_hq():
    cfg = parse_config('[chain]\nstore_id = "s017"\nnats = "nats://hq.example:4222"\n'
                       'coupons = "tcp://127.0.0.1:5570"\n')
    assert cfg.chain == {"store_id": "s017", "nats": "nats://hq.example:4222",
                         "coupons": "tcp://127.0.0.1:5570"}
    assert parse_config("").chain == {}
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config('[chain]\nstore = "s017"\n')
    with pytest.raises(ConfigError, match="nats://"):
        parse_config('[chain]\nnats = "http://hq:4222"\n')
    with pytest.raises(ConfigError, match="non-empty string"):
        parse_config("[chain]\nstore_id = 17\n")


def test_store_ids_are_subject_tokens_and_ids_are_stable():
    for good in ("s1", "RM-01", "store_17"):
        assert S.check_store_id(good) == good
    for bad in ("", "a.b", "a>b", "a b", "x" * 33, "s*"):
        with pytest.raises(S.ChainError) as e:
            S.check_store_id(bad)
        assert e.value.code == "BAD_STORE_ID"
    assert S.store_subject("s1", "payment") == "lanecore.store.s1.payment"
    assert S.store_msg_id("s1", "payment", 42) == "s1/payment/42"
    assert S.hq_msg_id("price", 7) == "hq/price/7"


def _lanecore(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lanecore", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def test_the_link_refuses_without_a_store_or_with_a_bad_one(tmp_path):
    r = _lanecore("link", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "USAGE" in r.stderr, r.stderr
    r = _lanecore("link", "--data-dir", str(tmp_path), "--store-id", "a.b", "--nats",
                  "nats://127.0.0.1:1")
    assert r.returncode == 2 and "BAD_STORE_ID" in r.stderr, r.stderr
    r = _lanecore("hq", "--db", "sqlite:///x.db", "--nats", "nats://127.0.0.1:1")
    assert r.returncode == 2 and "BAD_DB_URL" in r.stderr, r.stderr
