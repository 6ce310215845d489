"""Device drivers (pyserial) and their simulators."""
