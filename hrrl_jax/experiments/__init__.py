"""Experiments that train and evaluate many runs: the comparison of ERM, EL, CL, HRRL and Group DRO, and the
selection protocol that chooses each method's setting on validation data before confirming it on fresh seeds."""
