"""Data: phantoms, datalists and splits, input validation, MSD download."""
