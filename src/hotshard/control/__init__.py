"""The control loop shared by local mode and the Kubernetes operator: observe, decide, act."""
