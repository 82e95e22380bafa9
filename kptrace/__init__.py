"""kptrace: trace Kubernetes Service traffic through kube-proxy's rules."""

__version__ = "0.1.0"
