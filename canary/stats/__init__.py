"""Statistics: numpy/scipy only, no I/O, no clock, no knowledge of Prometheus or Kubernetes."""
