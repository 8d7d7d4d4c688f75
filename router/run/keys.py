"""``ctxroute keys new TENANT``: a new key, printed once, and the entry that puts its
SHA-256 (never the key) in the configuration."""

from __future__ import annotations

import argparse
import re
import sys

import orjson
from ctxroute.router.config.edge import TENANT
from ctxroute.router.core.keys import digest, new_key


def new_key_command(args: argparse.Namespace) -> int:
    key = new_key()
    if args.admin:
        if args.tenant or args.rpm or args.tpm or args.models or args.max_priority:
            print("ctxroute keys new --admin: an admin key has no tenant or limits",
                  file=sys.stderr)  # fmt: skip
            return 2
        print(f"admin key (shown once, keep it secret): {key}")
        print("\nput its hash under admin.keys in the router's configuration:\n")
        print(f"admin:\n  keys:\n    - {digest(key)}")
        return 0
    if not args.tenant or not re.fullmatch(TENANT, args.tenant):
        print("ctxroute keys new: give a TENANT name of letters, digits, '.', '_' or '-' "
              "(up to 64)", file=sys.stderr)  # fmt: skip
        return 2
    entry: dict[str, object] = {"sha256": digest(key), "tenant": args.tenant}
    if args.models:
        entry["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in ("max_priority", "rpm", "tpm", "weight"):
        value = getattr(args, name)
        if value is not None:
            entry[name] = value
    print(f"key for tenant {args.tenant} (shown once, keep it secret): {key}")
    print("\nadd this entry under auth.keys (or to the auth.keys_file list):\n")
    print("auth:\n  keys:\n    - " + orjson.dumps(entry).decode())
    return 0
