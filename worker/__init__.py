"""trainlab's worker: the training engine and the job loop that feeds it from the store."""
