"""The ultralytics 8.0.120 parity harness and its worker (run in the harness's own venv)."""
