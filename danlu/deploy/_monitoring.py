"""The monitoring files danlu ships: a Prometheus scrape configuration, alerting rules and a
Grafana dashboard, for ``danlu serve``, training runs and job agents (docs/monitoring.md).

They live in ``danlu/deploy/monitoring/`` (package data); ``danlu package --k8s`` copies them
into a build context, and :func:`monitoring_files` hands them to anything else.
"""

from __future__ import annotations

from importlib import resources

__all__ = ["MONITORING_FILES", "monitoring_files"]

#: The shipped files, by name: the scrape configuration, the alerting rules, the dashboard.
MONITORING_FILES = ("prometheus.yml", "alerts.yml", "grafana-dashboard.json")


def monitoring_files() -> dict[str, bytes]:
    """The shipped monitoring files, ``{file name: content}``.

    Example:
        >>> files = monitoring_files()
        >>> sorted(files)
        ['alerts.yml', 'grafana-dashboard.json', 'prometheus.yml']
        >>> b"danlu_train_running" in files["alerts.yml"]
        True
    """
    folder = resources.files("danlu.deploy").joinpath("monitoring")
    return {name: folder.joinpath(name).read_bytes() for name in MONITORING_FILES}
