"""A Flask (Werkzeug) upstream for tests/paths.rs: answers which of its routes served the
request."""
import logging
import sys

from flask import Flask

app = Flask(__name__)
logging.getLogger("werkzeug").setLevel(logging.ERROR)
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


@app.route("/admin", defaults={"rest": ""}, methods=METHODS)
@app.route("/admin/", defaults={"rest": ""}, methods=METHODS)
@app.route("/admin/<path:rest>", methods=METHODS)
def admin(rest):
    return "route=admin\n"


@app.route("/", defaults={"rest": ""}, methods=METHODS)
@app.route("/<path:rest>", methods=METHODS)
def open_(rest):
    return "route=open\n"


app.run(host="127.0.0.1", port=int(sys.argv[1]))
