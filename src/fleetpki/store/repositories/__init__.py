"""SQLAlchemy implementations of the repository Protocols in ``fleetpki.services.ports``."""
