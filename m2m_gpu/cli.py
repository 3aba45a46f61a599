"""``m2m-gpu`` command line: ``m2m-gpu info [--json]``."""

from __future__ import annotations

import argparse
import json
import sys


def _info(as_json: bool) -> int:
    import m2m_gpu

    report = m2m_gpu.info()
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"m2m-gpu {report['version']}")
    for b in report["backends"]:
        state = "available" if b["available"] else "not available"
        print(f"\n{b['name']}: {state}")
        if b["available"]:
            print(f"  device: {b['device']} ({b['device_type']})")
        else:
            print(f"  why: {b['reason']}")
        for lib, version in b["versions"].items():
            print(f"  {lib}: {version}")
    print(f"\nauto: {report['auto']['reason']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m2m-gpu", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="list backends: available or not and why, devices, "
                                         "library and driver versions")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args.json)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
