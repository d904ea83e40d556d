"""The reliability campaigns of bench/reliability.py: the load agent, the ledger check,
the faults, the fuzzers, and the campaigns themselves."""
