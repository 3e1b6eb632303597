"""Plan: recipe + where it runs -> every number and decision the job needs (pure)."""

from launcher.plan.plan import HostFacts, Plan, Rendezvous, make_plan, port_for_job

__all__ = ["HostFacts", "Plan", "Rendezvous", "make_plan", "port_for_job"]
