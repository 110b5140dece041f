"""Beyond one run: seeded sweeps, figures from workdirs, Gao et al. fits, and the
published reference curves."""
