"""Generated from api.proto by the build (setup.py): a wire-compatible subset of the Kubernetes CRI."""
