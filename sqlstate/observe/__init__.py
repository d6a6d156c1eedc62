"""What the daemon says about itself: counters, logs, progress, ``/healthz`` and ``/metrics``."""
