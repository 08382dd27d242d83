"""trainlab's HTTP service: the experiment contract, settings, the store and the API."""
