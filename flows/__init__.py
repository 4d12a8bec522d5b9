"""Pipeline composition and the command line (`python -m flows ...`). Composes tasks only."""
