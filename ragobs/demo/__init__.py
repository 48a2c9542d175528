"""``ragobs demo``: a simulated streaming RAG agent, measured live."""

from ragobs.demo.agent import AgentFailure, DemoConfig, SimulatedRAGAgent
from ragobs.demo.provider import SimulatedProvider
from ragobs.demo.runner import run_demo

__all__ = ["AgentFailure", "DemoConfig", "SimulatedProvider", "SimulatedRAGAgent", "run_demo"]
