#!/usr/bin/env python3
"""A small web service that downloads each Pacifica ingest as the Notifications service announces it.

Subscribe its URL to the Notifications service; each event posted to it (structured JSON, as Notifications
sends it, or CloudEvents binary mode) is downloaded into ``DOWNLOAD_DIR/<event id>/``.

    DOWNLOAD_DIR=/srv/incoming CARTD_CART_API_URL=http://cartd:8081 python3 examples/receiver.py
"""
from __future__ import annotations

import os
import re

import cherrypy

from pacifica.downloader import Downloader, DownloaderError, InvalidInputError
from pacifica.downloader.cloudevent import from_http


class Receiver:
    """Downloads the files of every CloudEvent POSTed to it; answers with the number of files."""

    def __init__(self, downloader: Downloader) -> None:
        """Use ``downloader`` (its location and Cartd) for every event."""
        self.downloader = downloader

    @cherrypy.expose
    def index(self) -> str:
        """Receive one event."""
        if cherrypy.request.method != "POST":
            raise cherrypy.HTTPError(405, "POST a CloudEvent here")
        try:
            event = from_http(cherrypy.request.headers, cherrypy.request.body.read())
            folder = re.sub(r"[^\w.-]", "_", str(event.get("id") or event.get("eventID") or "data"))
            paths = self.downloader.cloudevent(event, filename=folder)
        except InvalidInputError as error:
            raise cherrypy.HTTPError(400, str(error)) from None
        except DownloaderError as error:
            raise cherrypy.HTTPError(502, str(error)) from None
        return f"{len(paths)} files\n"


def main() -> None:
    """Serve on RECEIVER_PORT (default 8090), downloading into DOWNLOAD_DIR."""
    cherrypy.config.update({"server.socket_port": int(os.environ.get("RECEIVER_PORT", "8090"))})
    cherrypy.quickstart(Receiver(Downloader(os.environ.get("DOWNLOAD_DIR", "incoming"))), "/")


if __name__ == "__main__":
    main()
