"""A load generator for a running Omniweb: simulated members using the site over HTTP."""
