"""Entry points: the service process, the `leadscore` command, wiring, embedded infrastructure."""
