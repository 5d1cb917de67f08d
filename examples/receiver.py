#!/usr/bin/env python3
"""A small web service that queues the download of each Pacifica ingest as the Notifications service announces it.

Subscribe its URL to the Notifications service.  Each event posted to it
(structured JSON, as Notifications sends it, or CloudEvents binary mode) is
checked, queued for the download workers and answered at once with
``202 Accepted`` and the task's id; the workers download it into
``DOWNLOAD_DIR/<event id>/``.  ``GET /status/<task id>`` tells how the task
is doing (its progress while it runs), and gives the manifest once it is
done.

    BROKER_URL=redis://broker:6379/0 DOWNLOAD_DIR=/srv/incoming python3 examples/receiver.py
    BROKER_URL=redis://broker:6379/0 CARTD_CART_API_URL=http://cartd:8081 \\
        celery -A pacifica.downloader.tasks worker --concurrency 4     # on each download host

Answering at once matters: a 2000-file download takes minutes, the
sender would time out and send the event again, and that would start the
same download twice.
"""
from __future__ import annotations

import os
import re
from typing import Any

import cherrypy
from celery import Celery
from celery.result import AsyncResult
from kombu.exceptions import OperationalError

from pacifica.downloader import InvalidInputError
from pacifica.downloader.cloudevent import from_http
from pacifica.downloader.tasks import app, enqueue


class Receiver:
    """Queues the download of every CloudEvent POSTed to it into ``location``; answers 202 with the task id."""

    def __init__(self, location: str, celery_app: Celery = app) -> None:
        """Queue downloads into ``location`` (a path as the workers see it) through ``celery_app``'s broker."""
        self.location = location
        self.celery_app = celery_app

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def index(self) -> dict[str, Any]:
        """Receive one event: 202 and the task id, 400 for an event that cannot be downloaded."""
        if cherrypy.request.method != "POST":
            raise cherrypy.HTTPError(405, "POST a CloudEvent here")
        try:
            event = from_http(cherrypy.request.headers, cherrypy.request.body.read())
            folder = re.sub(r"[^\w.-]", "_", str(event.get("id") or event.get("eventID") or "data"))
            task = enqueue(event, self.location, filename=folder, celery_app=self.celery_app)
        except InvalidInputError as error:
            raise cherrypy.HTTPError(400, str(error)) from None
        except (OperationalError, OSError) as error:  # the broker cannot be reached
            raise cherrypy.HTTPError(503, f"cannot queue the download: {error}") from None
        cherrypy.response.status = 202
        cherrypy.response.headers["Location"] = f"/status/{task.id}"
        return {"task": task.id, "folder": folder}

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def status(self, task_id: str) -> dict[str, Any]:
        """How task ``task_id`` is doing; its manifest once done, its error once failed."""
        result = AsyncResult(task_id, app=self.celery_app)
        answer: dict[str, Any] = {"task": task_id, "state": result.state}
        if result.state == "PROGRESS":
            answer["progress"] = result.info  # phase, files_done, files_total, bytes_done, bytes_total, ...
        elif result.successful():
            answer["files"] = result.result
        elif result.failed():
            answer["error"] = f"{type(result.result).__name__}: {result.result}"
        return answer


def main() -> None:
    """Serve on RECEIVER_PORT (default 8090), queuing downloads into DOWNLOAD_DIR."""
    cherrypy.config.update({"server.socket_port": int(os.environ.get("RECEIVER_PORT", "8090"))})
    location = os.path.abspath(os.environ.get("DOWNLOAD_DIR", "incoming"))
    cherrypy.quickstart(Receiver(location), "/")


if __name__ == "__main__":
    main()
