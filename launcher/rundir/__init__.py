"""The run directory: its layout, the one durable writer, status files, job records, checkpoints
on disk, and how a RUN argument is resolved. Every stage (submit, node agent, ranks, collect)
reads and writes run-dir files through this package, so each file has one owner of its name and
format (layout.py lists them all)."""
