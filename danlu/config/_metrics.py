"""The ``train.metrics:`` block: a training run's progress for Prometheus, off by default::

    train:
      metrics:
        port: 9101                 # serve /metrics on 127.0.0.1:9101 while the run trains ...
        host: 127.0.0.1            # ... beyond loopback only when told (no auth on this port)
        push: http://pushgateway:9091   # ... and/or push to a Pushgateway
        push_every_s: 15

``danlu run RECIPE --metrics-port 9101`` is the same as ``--set train.metrics.port=9101``. The
series (``danlu_train_*``: epoch, losses, throughput, ETA, energy, last progress) are described in
docs/monitoring.md. Where the progress is shown never changes the model: a resumed run may
change or drop this block.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MetricsConfig"]


class MetricsConfig(BaseModel):
    """Expose the run's progress to Prometheus: an HTTP endpoint, a Pushgateway push, or both."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        None,
        description="Serve the danlu_train_* series at http://HOST:PORT/metrics while the run "
        "trains (the endpoint lives as long as the process).",
    )
    host: Annotated[str, Field(min_length=1, max_length=255)] = Field(
        "127.0.0.1",
        description="Address the endpoint listens on; it has no authentication, so keep it on "
        "loopback unless the network is trusted (e.g. a pod's own address).",
    )
    push: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")] | None = Field(
        None,
        description="A Prometheus Pushgateway URL (http://host:9091) to push the series to every "
        "push_every_s seconds, at each epoch's end and when training ends.",
    )
    push_every_s: Annotated[float, Field(ge=1.0, le=3600.0)] = Field(
        15.0, description="Seconds between two pushes to the Pushgateway."
    )

    @model_validator(mode="after")
    def _somewhere(self) -> MetricsConfig:
        if self.port is None and self.push is None:
            raise ValueError(
                "say where the progress goes: port (e.g. 9101, scraped by Prometheus) and/or "
                "push (a Pushgateway URL, e.g. http://127.0.0.1:9091)"
            )
        return self
