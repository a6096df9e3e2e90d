"""What `make bench*` measures (run as `python -m benchmarks.NAME`); nothing in lit_compclip imports it."""
