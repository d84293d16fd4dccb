"""The web console: rules, leads, accounts and the pipeline for people, at /console."""
