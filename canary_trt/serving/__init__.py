"""The code of the Triton python-backend models (model_repository/*/1/model.py import it).

Each module defines `TritonPythonModel`. They run inside Triton's python stub, where
`triton_python_backend_utils` exists; they never import torch.
"""
