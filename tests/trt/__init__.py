"""TensorRT API conformance: the real bindings of each version, and a checker of the compat code."""
