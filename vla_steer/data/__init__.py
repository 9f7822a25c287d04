from vla_steer.data.demos import DemoArrays, generate_demonstrations, load_demonstrations
from vla_steer.data.experts import make_expert

__all__ = ["DemoArrays", "generate_demonstrations", "load_demonstrations", "make_expert"]
