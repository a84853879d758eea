"""What the gateway tells its operators: Prometheus metrics (`Metrics`), access lines (`AccessLog`), other logs."""
