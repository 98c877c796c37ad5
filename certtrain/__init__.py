"""certtrain: certified training, Lipschitz networks and exact verification."""

__version__ = "0.1.0"
