"""The gRPC client side of canary-trt. Installs with `pip install .[client]` and never imports torch."""
