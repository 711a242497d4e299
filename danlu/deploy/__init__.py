"""The deployment kit: a build context per model version (``danlu package``), Kubernetes
manifests, and the monitoring files (Prometheus scrape config and alerting rules, a Grafana
dashboard) that watch serving and training.

Everything here is generated from the registry, so a packaged model always carries its
preprocessing, runs as a non-root user, has its probes and is scraped.
"""

from __future__ import annotations

from danlu.deploy._k8s import K8sSpec, check_manifests, k8s_name, kubernetes_manifests
from danlu.deploy._monitoring import monitoring_files
from danlu.deploy._package import (
    PackageOptions,
    PackageResult,
    k8s_resources,
    package_version,
)

__all__: list[str] = [
    "K8sSpec",
    "PackageOptions",
    "PackageResult",
    "check_manifests",
    "k8s_name",
    "k8s_resources",
    "kubernetes_manifests",
    "monitoring_files",
    "package_version",
]
