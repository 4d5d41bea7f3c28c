"""Runnable experiments over `lab/` (python -m experiments.<name> --help)."""
