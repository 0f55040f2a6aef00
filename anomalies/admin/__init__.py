"""The anomalies admin; importing it registers the models."""

from anomalies.admin import cost_anomalies

__all__ = ["cost_anomalies"]
