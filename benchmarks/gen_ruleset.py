"""Write a generated kube-proxy node ruleset for benchmarks.

    python benchmarks/gen_ruleset.py --services 10000 --endpoints 10 --out benchmarks/out/10k.save

The cluster is :func:`kptrace.generate.spec.synthetic_spec`: Service CIDR 10.96.0.0/12,
pod CIDR 10.244.0.0/16, node 192.168.49.2, mostly ClusterIP Services with some
NodePort, LoadBalancer and externalTrafficPolicy Local ones and one without
endpoints.  The same arguments always give the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from kptrace.generate import render_restore, render_save  # noqa: E402
from kptrace.generate.spec import synthetic_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a generated kube-proxy iptables ruleset.")
    parser.add_argument("--services", type=int, required=True, help="number of Services")
    parser.add_argument("--endpoints", type=int, required=True, help="endpoints per Service")
    parser.add_argument("--format", choices=("save", "restore"), default="save",
                        help="iptables-save output (default) or kube-proxy's iptables-restore payload")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--out", type=Path, help="output file (default: stdout)")
    args = parser.parse_args(argv)
    if args.services < 0 or args.endpoints < 0:
        parser.error("--services and --endpoints must be non-negative")

    start = time.perf_counter()
    spec = synthetic_spec(args.services, args.endpoints, seed=args.seed)
    built = time.perf_counter()
    text = render_save(spec) if args.format == "save" else render_restore(spec)
    rendered = time.perf_counter()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    rules = text.count("\n-A ")
    print(f"{len(spec.services)} services, {rules} rules, {len(text) / 1e6:.1f} MB; "
          f"spec {built - start:.2f}s, render {rendered - built:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
