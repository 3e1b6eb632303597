"""ftlaunch: one YAML recipe -> plan -> rendered configs -> Slurm or local run -> one report.

The package is laid out in the order a job flows through it:
recipe/ (load + validate) -> plan/ (pure arithmetic) -> render/ (text out) ->
submit/ (run dir, local or Slurm dispatch) -> run/ (what each node executes) ->
train/ (what each rank executes) -> collect/ (reports and model export).
"""

__version__ = "0.1.0"
