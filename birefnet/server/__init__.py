"""`birefnet serve`: a local HTTP server for image editors and scripts (FastAPI + uvicorn, extra `server`).

One model in memory, one worker thread running it, bad requests answered with a one-line JSON
error. Modules: settings (what the command line asked for), security (Host/Origin/token/size
checks), uploads (form fields and image decoding), weights (which weights clients may pick),
worker (the model and its queue), app (the routes), run (start and stop), bench (benchmark).
"""

from .run import serve

__all__ = ["serve"]
