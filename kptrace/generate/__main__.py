"""``python -m kptrace.generate SPEC [--format save|restore|jumps]``: print a ruleset.

SPEC is a JSON (or, with PyYAML installed, YAML) file in :func:`spec_from_dict` form,
or a kube-proxy reference ``T.flows.json`` (recognised by its ``setup`` key).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kptrace.generate.iptables import render_jumps, render_restore, render_save
from kptrace.generate.spec import ClusterSpec, spec_from_dict, spec_from_flows


def load_spec(path: Path) -> ClusterSpec:
    text = path.read_text()
    data: Any
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"{path}: reading YAML needs PyYAML (pip install pyyaml)") from None
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if isinstance(data, dict) and "setup" in data:
        return spec_from_flows(data)
    return spec_from_dict(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kptrace.generate", description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path, help="cluster spec (JSON/YAML) or a reference flows.json")
    parser.add_argument("--format", choices=("save", "restore", "jumps"), default="save",
                        help="iptables-save output (default), kube-proxy's restore payload, or its jump rules")
    parser.add_argument("--order", choices=("sorted", "sync"), default="sorted",
                        help="restore payload order: kube-proxy's test order (default) or its write order")
    parser.add_argument("--out", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "save":
        text = render_save(spec)
    elif args.format == "restore":
        text = render_restore(spec, order=args.order)
    else:
        text = render_jumps(spec)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
