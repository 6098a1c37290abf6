"""fleetpki: a self-hosted certificate authority for IoT device fleets."""

__all__ = ["__version__"]

__version__ = "0.1.0"
