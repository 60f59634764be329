"""Demonstration Bank: each demonstration read through the frozen backbone once, stored, selected per query."""

from aim_icl.bank.bank import DemoBank
from aim_icl.bank.build import build_bank, merge_shards, read_demo_file
from aim_icl.bank.fingerprint import backbone_fingerprint, content_key
from aim_icl.bank.select import SELECTORS, Selector
from aim_icl.bank.store import BankStore

__all__ = [
    "SELECTORS",
    "BankStore",
    "DemoBank",
    "Selector",
    "backbone_fingerprint",
    "build_bank",
    "content_key",
    "merge_shards",
    "read_demo_file",
]
