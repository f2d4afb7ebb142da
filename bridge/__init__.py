"""dqn_bridge: a JAX DQN agent served to the BEAM over the ErlPort wire protocol."""

__version__ = "0.1.0"
