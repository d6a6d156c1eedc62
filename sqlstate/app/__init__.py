"""The daemon: its life (``daemon.py``), the batch loop, the claims made at each rebalance,
and the copies of its positions and health it hands to the outside."""
