"""One benchmark across the three papers (issue 16): every method under every protocol, on the results ledger."""
