"""Where results go: Prometheus metrics, the decision journal, evidence images."""
