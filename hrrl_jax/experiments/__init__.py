"""Experiments that train and evaluate many runs: the comparison of ERM, EL, CL, HRRL and Group DRO."""
