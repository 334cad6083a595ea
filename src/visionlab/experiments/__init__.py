"""Many runs: seeds, comparisons with statistics, sweeps, ensembles, and the report of any results folder."""
