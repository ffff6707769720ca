"""``vidiff serve``: an HTTP job service for image-to-video with a persisted queue and a web page.

``store`` keeps the queue and the job records in SQLite, ``worker`` runs the jobs (one thread per device),
``app`` is the FastAPI application (the API under ``/v1`` and the page in ``static/``). Nothing in vidiff
imports this package but the ``vidiff serve`` command.
"""
