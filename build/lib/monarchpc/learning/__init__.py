"""Learning: flows (expected counts), stochastic mini-batch EM and step-size schedules."""

from monarchpc.learning.em import accumulate_flows, em_step, flows
from monarchpc.learning.schedules import step_size

__all__ = ["accumulate_flows", "em_step", "flows", "step_size"]
