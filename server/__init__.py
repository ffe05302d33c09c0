"""The duplex daemon: thinker and performer workers, transports, unit clock, front end, metrics, CLI."""
