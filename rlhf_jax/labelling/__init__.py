"""Where labels come from: gold rewards and mock labellers (`labelers`), and people
(`label_server`, a web app with its own command line)."""
