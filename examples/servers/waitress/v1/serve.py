"""Serves app.py with waitress on the listening socket whose fd is argv[1]."""
import socket
import sys

import waitress

from app import app

waitress.serve(app, sockets=[socket.socket(fileno=int(sys.argv[1]))], threads=4)
