"""What kube-proxy's rule comments say about Services.

kube-proxy writes comments such as ``ns1/svc1:p80 cluster IP``, ``ns1/svc1:p80 ->
10.180.0.1:80``, ``masquerade traffic for ns1/svc1:p80 external destinations`` or
``ns6/svc6:p80 has no endpoints``. The Service port name is the word shaped like
``namespace/name[:port]``.
"""

from __future__ import annotations

import re
from typing import Iterable, Protocol

_SVC_WORD = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[^\s/]*)?$")
SERVICE_CHAIN = re.compile(r"^KUBE-(SVC|EXT|SVL|FW|SEP|XLB)-[A-Z2-7]{16}$")


def service_in_comment(comment: str | None) -> str | None:
    if not comment:
        return None
    for word in comment.split():
        if _SVC_WORD.match(word):
            return word
    return None


class _HopLike(Protocol):
    chain: str
    rule: str
    action: str


def service_of_hops(hops: Iterable[_HopLike]) -> str | None:
    """The Service port a path went through, from the first kube-proxy rule naming one."""
    for hop in hops:
        if not (hop.chain.startswith("KUBE-") or hop.action.startswith(("jump KUBE-", "goto KUBE-"))):
            continue
        m = re.search(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))', hop.rule)
        if m is None:
            continue
        svc = service_in_comment(m.group(1) if m.group(1) is not None else m.group(2))
        if svc:
            return svc
    return None
