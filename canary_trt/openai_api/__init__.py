"""An OpenAI-compatible HTTP front for a canary-trt Triton server: applications that call OpenAI's
`POST /v1/audio/transcriptions` switch to canary-trt by changing only their base URL.

    canary-trt api --triton-url 127.0.0.1:8001          # http://127.0.0.1:8080/v1
"""

from __future__ import annotations

from .app import create_app
from .settings import Settings


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Run the front with uvicorn until interrupted (SIGINT/SIGTERM end it cleanly)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


__all__ = ["Settings", "create_app", "serve"]
