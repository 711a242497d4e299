"""The deployment kit: a build context per model version (``danlu package``), Kubernetes
manifests, and the monitoring files (Prometheus scrape config and alerting rules, a Grafana
dashboard) that watch serving and training.

Everything here is generated from the registry, so a packaged model always carries its
preprocessing, runs as a non-root user, has its probes and is scraped.
"""

from __future__ import annotations

from danlu.deploy._monitoring import monitoring_files

__all__: list[str] = ["monitoring_files"]
