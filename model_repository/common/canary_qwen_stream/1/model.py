# The code lives in the installed package; this file only hands it to the python backend.
from canary_trt.serving.streaming import TritonPythonModel  # noqa: F401
