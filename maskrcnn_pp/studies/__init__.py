"""Tools that run trained models to produce reports: multi-seed studies, GPU throughput."""
