"""The training entrypoint every rank runs: `python -m launcher.train RUN_DIR` (under accelerate launch).

Reads top to bottom in `__main__.py`: setup -> data -> model -> fit -> evaluate -> save.
"""
