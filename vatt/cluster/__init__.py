"""Pretraining on Kubernetes through KubeRay: render a run's RayJob from `k8s/` (render), talk to
the API server with clear errors and retries (client), submit, follow, clean up and read the
results back (jobs). Shared by `vatt submit` and the flows (cluster.target=kubernetes)."""
