"""The `ftlaunch` command line: one small module per verb."""
