"""The benchmark across the three papers: units on the results ledger, protocols and the summary."""
